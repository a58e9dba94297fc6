//! Which senders relay listen takes (networks, port names) and the forwards they name.

use super::*;

#[test]
fn networks() {
    let cases = [
        ("10.0.0.0/8", "10.1.2.3", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("127.0.0.1", "127.0.0.1", true),
        ("127.0.0.1", "127.0.0.2", false),
        ("0.0.0.0/0", "8.8.8.8", true),
        ("0.0.0.0/0", "::1", false),
        ("127.0.0.0/8", "::ffff:127.0.0.1", true),
        ("fd00::/8", "fd12::1", true),
        ("::1", "::1", true),
    ];
    for (net, ip, inside) in cases {
        let net: IpNet = net.parse().expect(net);
        let ip: IpAddr = ip.parse().expect(ip);
        assert_eq!(net.contains(ip), inside, "{net:?} {ip}");
    }
    for bad in ["10.0.0.0/33", "::/129", "host", "10.0.0.0/x"] {
        assert!(bad.parse::<IpNet>().is_err(), "{bad}");
    }
}

#[test]
fn the_address_names_a_forward_only_exactly() {
    let forwarder = RemoteForwarder {
        entity: "hc".into(),
        forwards: Forwards(vec![
            "echo=127.0.0.1:7".parse().expect("valid"),
            "a b=127.0.0.1:8".parse().expect("valid"),
        ]),
        allow: vec![],
    };
    let cases = [
        (
            "ws://h:1/$hc/hc/echo?sb-hc-action=accept&sb-hc-id=1",
            Some("echo"),
        ),
        (
            "wss://ns.example/$hc/hc/a%20b?sb-hc-action=accept",
            Some("a b"),
        ),
        ("ws://h/$hc/hc?sb-hc-action=accept", None),
        ("ws://h/$hc/hc/echo2?x=1", None),
        ("ws://h/$hc/hc/%FF?x=1", None),
        ("ws://h/$hc/echo?x=1", None),
        ("ws://h/$hc/other/echo?x=1", None),
        ("not a url", None),
        ("", None),
    ];
    for (address, want) in cases {
        let accept = Accept {
            address: address.into(),
            id: "i".into(),
            connect_headers: Default::default(),
            remote_endpoint: crate::relay::protocol::RemoteEndpoint {
                address: "127.0.0.1".into(),
                port: 1,
            },
        };
        let got = forwarder.named_forward(&accept).map(|f| f.name.as_str());
        assert_eq!(got, want, "{address}");
    }
}

#[test]
fn allowlist_rejects_with_403() {
    let forwarder = RemoteForwarder {
        entity: "hc".into(),
        forwards: Forwards::default(),
        allow: vec!["10.0.0.0/8".parse().expect("valid")],
    };
    let mut accept = Accept {
        address: "ws://h/".into(),
        id: "i".into(),
        connect_headers: Default::default(),
        remote_endpoint: crate::relay::protocol::RemoteEndpoint {
            address: "127.0.0.1".into(),
            port: 1,
        },
    };
    assert!(matches!(
        forwarder.decide(&accept),
        Decision::Reject { status: 403, .. }
    ));
    accept.remote_endpoint.address = "10.9.9.9".into();
    assert_eq!(forwarder.decide(&accept), Decision::Accept);
    let open = RemoteForwarder {
        entity: "hc".into(),
        forwards: Forwards::default(),
        allow: vec![],
    };
    accept.remote_endpoint.address = "garbage".into();
    assert_eq!(open.decide(&accept), Decision::Accept);
}

/// A sender that names a port this listener does not forward is sent on with 421 (the
/// relay picks another listener on its retry); by the preamble's rule, so a lone
/// numeric forward takes any number; a sender that names no port is let through.
#[test]
fn a_port_served_elsewhere_is_misdirected() {
    let accept = |address: &str| Accept {
        address: address.into(),
        id: "i".into(),
        connect_headers: Default::default(),
        remote_endpoint: crate::relay::protocol::RemoteEndpoint {
            address: "10.1.1.1".into(),
            port: 1,
        },
    };
    let forwarder = |specs: &[&str], allow: &[&str]| RemoteForwarder {
        entity: "hc".into(),
        forwards: Forwards(specs.iter().map(|s| s.parse().expect(s)).collect()),
        allow: allow.iter().map(|n| n.parse().expect(n)).collect(),
    };
    let two = ["a=127.0.0.1:7", "b=127.0.0.1:8"];
    /// (forwards, allowed networks, rendezvous address, the status it is rejected with)
    type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a str, Option<u16>);
    let cases: [Case; 9] = [
        (&two, &[], "ws://h/$hc/hc/a?sb-hc-action=accept", None),
        (&two, &[], "ws://h/$hc/hc/c?sb-hc-action=accept", Some(421)),
        (&two, &[], "ws://h/$hc/hc/c?amlx-spare=1", Some(421)),
        (&two, &[], "ws://h/$hc/hc?sb-hc-action=accept", None),
        (&two, &[], "ws://h/$hc/hc/a/b?x=1", Some(421)),
        (&["5678=127.0.0.1:9"], &[], "ws://h/$hc/hc/5679", None),
        (&["5678=127.0.0.1:9"], &[], "ws://h/$hc/hc/x", Some(421)),
        // The network check comes first: a stranger learns nothing about ports.
        (&two, &["10.0.0.0/8"], "ws://h/$hc/hc/c", Some(421)),
        (&two, &["192.168.0.0/16"], "ws://h/$hc/hc/c", Some(403)),
    ];
    for (specs, allow, address, want) in cases {
        let got = match forwarder(specs, allow).decide(&accept(address)) {
            Decision::Accept => None,
            Decision::Reject { status, .. } => Some(status),
        };
        assert_eq!(got, want, "{specs:?} {allow:?} {address}");
    }
}
