//! The accept command sent to a listener: the rendezvous address, the sender's headers
//! and address. Its shape is what Microsoft's listeners parse: the Java client throws
//! without `connectHeaders`/`remoteEndpoint`, and the Node listener gives up without the
//! sender's `Sec-WebSocket-Key`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use url::Url;

use super::upgrade::Request;
use crate::relay::protocol::{
    self, Accept, ControlMessage, HEADER_TOKEN, HcRequest, RejectStatus, RemoteEndpoint,
};

/// Headers never forwarded: the sender's token is a Send credential, not the listener's;
/// an extension offer is one the relay never negotiates (each leg runs without
/// extensions), and hyco-ws listeners that act on it crash (`abortConnection` calls an
/// undefined `WebSocketClient`): one sender offering `permessage-deflate;
/// server_max_window_bits=99` ended Microsoft's Node listener.
const WITHHELD_HEADERS: &[&str] = &[HEADER_TOKEN, "Sec-WebSocket-Extensions"];

/// Canonical spellings of the headers listeners look up (Java uses a case-sensitive map;
/// many clients send lower case).
const CANONICAL_HEADERS: &[&str] = &[
    "Host",
    "Upgrade",
    "Connection",
    "Origin",
    "User-Agent",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    protocol::HEADER_USER_AGENT,
];

/// Status the sender gets when a listener's `sb-hc-statusCode` is not an error status.
pub const INVALID_REJECT_STATUS: u16 = 502;

/// Where a listener reaches this relay: its scheme and the `Host` it connected with.
/// `None` when that `Host` is not a valid authority.
pub fn listener_base(scheme: &str, host: &str) -> Option<Url> {
    crate::web_url::parse(&format!("{scheme}://{host}/"))
        .ok()
        .filter(|u| u.path() == "/" && u.query().is_none() && u.username().is_empty())
}

/// The `{"accept":{...}}` text for one listener: the rendezvous address on the listener's
/// own base URL with the sender's full path and app query, the sender's headers and its
/// address.
pub fn command(base: &Url, sender: &Request, hc: &HcRequest, id: &str, peer: SocketAddr) -> String {
    let address = protocol::accept_url(base, &hc.path, &hc.app_query, id);
    ControlMessage::Accept(Accept {
        address: address.to_string(),
        id: id.to_owned(),
        connect_headers: connect_headers(sender),
        remote_endpoint: RemoteEndpoint {
            address: peer.ip().to_string(),
            port: peer.port(),
        },
    })
    .to_json()
}

/// Every sender header but the token, names canonicalised, repeats joined with `, `.
fn connect_headers(sender: &Request) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &sender.headers {
        if WITHHELD_HEADERS
            .iter()
            .any(|w| w.eq_ignore_ascii_case(name))
        {
            continue;
        }
        map.entry(canonical(name))
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    map
}

fn canonical(name: &str) -> String {
    if let Some(known) = CANONICAL_HEADERS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
    {
        return (*known).to_owned();
    }
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The status a rejecting listener asked for; anything but a 4xx/5xx (a malformed value
/// too) becomes 502.
pub fn reject_status(asked: &RejectStatus) -> u16 {
    match asked {
        RejectStatus::Status(code) if (400..=599).contains(code) => *code,
        _ => INVALID_REJECT_STATUS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn request(raw_path: &str, raw_query: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            raw_path: raw_path.into(),
            raw_query: raw_query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn hc(target: &str) -> HcRequest {
        HcRequest::parse(target).expect("valid target")
    }

    #[test]
    fn address_keeps_suffix_and_app_query() {
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        let base = listener_base("ws", "l:1").expect("valid host");
        let cases = [
            (
                "/$hc/hc1?sb-hc-action=connect&sb-hc-token=t",
                "ws://l:1/$hc/hc1?sb-hc-action=accept&sb-hc-id=ID",
            ),
            (
                "/%24hc/hc1/a%20b?x=1&sb-hc-id=s&y=",
                "ws://l:1/$hc/hc1/a%20b?x=1&y=&sb-hc-action=accept&sb-hc-id=ID",
            ),
        ];
        for (target, want) in cases {
            let text = command(&base, &request("", "", &[]), &hc(target), "ID", peer);
            let v: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(v["accept"]["address"], want, "{target}");
        }
    }

    #[test]
    fn listener_bases() {
        let cases = [
            ("127.0.0.1:9443", Some("ws://127.0.0.1:9443/")),
            ("relay.example", Some("ws://relay.example/")),
            ("[::1]:9", Some("ws://[::1]:9/")),
            ("a b", None),
            ("x/y", None),
            ("u@h", None),
        ];
        for (host, want) in cases {
            assert_eq!(
                listener_base("ws", host).map(|u| u.to_string()).as_deref(),
                want,
                "{host}"
            );
        }
    }

    #[test]
    fn command_has_every_field_listeners_need() {
        let sender = request(
            "/$hc/hc1",
            "",
            &[
                ("host", "relay:9443"),
                ("sec-websocket-key", "k=="),
                ("sec-websocket-version", "13"),
                ("ServiceBusAuthorization", "SharedAccessSignature secret"),
                ("sec-websocket-extensions", "permessage-deflate"),
                ("x-custom-thing", "a"),
                ("X-Custom-Thing", "b"),
            ],
        );
        let peer: SocketAddr = "10.1.2.3:50123".parse().expect("literal");
        let base = listener_base("wss", "relay:9443").expect("valid host");
        let text = command(&base, &sender, &hc("/$hc/hc1"), "ID", peer);
        assert!(!text.contains("secret"), "token withheld: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        let a = &v["accept"];
        assert_eq!(
            a["address"],
            "wss://relay:9443/$hc/hc1?sb-hc-action=accept&sb-hc-id=ID"
        );
        assert_eq!(a["id"], "ID");
        assert_eq!(a["connectHeaders"]["Host"], "relay:9443");
        assert_eq!(a["connectHeaders"]["Sec-WebSocket-Key"], "k==");
        assert_eq!(a["connectHeaders"]["Sec-WebSocket-Version"], "13");
        assert_eq!(a["connectHeaders"]["X-Custom-Thing"], "a, b");
        assert!(
            a["connectHeaders"]
                .get("Sec-WebSocket-Extensions")
                .is_none(),
            "no extension offer: the relay negotiates none: {text}"
        );
        assert_eq!(a["remoteEndpoint"]["address"], "10.1.2.3");
        assert_eq!(a["remoteEndpoint"]["port"], 50123);
    }

    #[test]
    fn reject_statuses() {
        for (asked, want) in [(403, 403), (404, 404), (200, 502), (101, 502), (599, 599)] {
            assert_eq!(reject_status(&RejectStatus::Status(asked)), want, "{asked}");
        }
        for text in ["abc", "99", "", "é"] {
            let asked = RejectStatus::Invalid(text.to_owned());
            assert_eq!(reject_status(&asked), INVALID_REJECT_STATUS, "{text:?}");
        }
    }
}
