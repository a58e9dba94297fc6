//! This node's identity: hostname and the IP address to publish.

use std::net::IpAddr;

use serde::Serialize;

/// Published when the hostname cannot be read (it never fails the agent).
const UNKNOWN_HOSTNAME: &str = "unknown";

/// Hostname and primary IP of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub hostname: String,
    pub ip: Option<IpAddr>,
    /// Where `ip` came from, so a wrong address in the log can be traced to its cause.
    pub ip_source: IpSource,
}

/// How the node IP was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpSource {
    /// `--node-ip` / `AMLX_NODE_IP`.
    Override,
    /// The address of the interface with the default route (IPv4 first, then IPv6).
    Route,
    /// The first non-loopback, non-link-local address of an interface that is up.
    Interface,
    /// Nothing found.
    None,
}

impl std::fmt::Display for IpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpSource::Override => "override",
            IpSource::Route => "route",
            IpSource::Interface => "interface",
            IpSource::None => "none",
        })
    }
}

/// Discovers the node identity; `ip_override` (`--node-ip`, `AMLX_NODE_IP`) wins. Never
/// fails: an unknown IP is `None`, an unreadable hostname is `"unknown"`.
pub fn discover(ip_override: Option<IpAddr>) -> NodeInfo {
    let (ip, ip_source) = match ip_override {
        Some(ip) => (Some(ip), IpSource::Override),
        None => detect_ip(),
    };
    NodeInfo {
        hostname: hostname(),
        ip,
        ip_source,
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| UNKNOWN_HOSTNAME.to_owned())
}

fn detect_ip() -> (Option<IpAddr>, IpSource) {
    let routed = [local_ip_address::local_ip(), local_ip_address::local_ipv6()]
        .into_iter()
        .filter_map(Result::ok)
        .find(|ip| is_publishable(*ip));
    if let Some(ip) = routed {
        return (Some(ip), IpSource::Route);
    }
    let from_interfaces = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            pick_interface_address(addrs.filter_map(|ifa| {
                use nix::net::if_::InterfaceFlags;
                let addr = ifa.address?;
                let ip = addr
                    .as_sockaddr_in()
                    .map(|a| IpAddr::V4(a.ip()))
                    .or_else(|| addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))?;
                Some((ifa.flags.contains(InterfaceFlags::IFF_UP), ip))
            }))
        })
        .ok()
        .flatten();
    match from_interfaces {
        Some(ip) => (Some(ip), IpSource::Interface),
        None => (None, IpSource::None),
    }
}

/// The first publishable address of an interface that is up, IPv4 before IPv6.
fn pick_interface_address(addrs: impl Iterator<Item = (bool, IpAddr)>) -> Option<IpAddr> {
    let usable: Vec<IpAddr> = addrs
        .filter(|(up, ip)| *up && is_publishable(*ip))
        .map(|(_, ip)| ip)
        .collect();
    let first_of = |v4| usable.iter().copied().find(|ip| ip.is_ipv4() == v4);
    first_of(true).or_else(|| first_of(false))
}

/// Another node could reach it: not loopback, unspecified, multicast or link-local.
fn is_publishable(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn override_wins() {
        let info = discover(Some(ip("10.1.2.3")));
        assert_eq!(info.ip, Some(ip("10.1.2.3")));
        assert_eq!(info.ip_source, IpSource::Override);
        assert!(!info.hostname.is_empty());
    }

    #[test]
    fn discovery_never_fails_and_agrees_with_its_source() {
        let info = discover(None);
        assert!(!info.hostname.is_empty());
        assert_eq!(info.ip.is_none(), info.ip_source == IpSource::None);
        assert_ne!(info.ip_source, IpSource::Override);
        if let Some(found) = info.ip {
            assert!(is_publishable(found), "{found}");
        }
    }

    #[test]
    fn publishable_addresses() {
        let cases = [
            ("10.0.0.4", true),
            ("192.168.1.2", true),
            ("2001:db8::1", true),
            ("127.0.0.1", false),
            ("127.5.6.7", false),
            ("::1", false),
            ("0.0.0.0", false),
            ("::", false),
            ("169.254.10.1", false),
            ("fe80::1", false),
            ("224.0.0.1", false),
        ];
        for (addr, want) in cases {
            assert_eq!(is_publishable(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn picks_first_usable_interface_address_ipv4_first() {
        type Case<'a> = (&'a [(bool, &'a str)], Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (&[], None),
            (&[(true, "127.0.0.1"), (true, "::1")], None),
            (
                &[(true, "fe80::1"), (true, "2001:db8::5")],
                Some("2001:db8::5"),
            ),
            (
                &[(true, "2001:db8::5"), (true, "10.0.0.9")],
                Some("10.0.0.9"),
            ),
            (&[(false, "10.0.0.8"), (true, "10.0.0.9")], Some("10.0.0.9")),
            (
                &[(true, "169.254.1.1"), (true, "172.17.0.2")],
                Some("172.17.0.2"),
            ),
            (&[(true, "10.0.0.1"), (true, "10.0.0.2")], Some("10.0.0.1")),
        ];
        for (addrs, want) in cases {
            let got = pick_interface_address(addrs.iter().map(|(up, a)| (*up, ip(a))));
            assert_eq!(got, want.map(ip), "{addrs:?}");
        }
    }

    #[test]
    fn json_names_the_source() {
        let info = NodeInfo {
            hostname: "node-1".into(),
            ip: Some(ip("10.0.0.4")),
            ip_source: IpSource::Route,
        };
        let json = serde_json::to_value(&info).expect("json");
        assert_eq!(json["ip_source"], "route");
        assert_eq!(json["ip"], "10.0.0.4");
        assert_eq!(IpSource::Interface.to_string(), "interface");
    }
}
