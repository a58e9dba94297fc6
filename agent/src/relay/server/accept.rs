//! The accept command sent to a listener: the rendezvous address, the sender's headers
//! and address. Its shape is what Microsoft's listeners parse: the Java client throws
//! without `connectHeaders`/`remoteEndpoint`, and the Node listener gives up without the
//! sender's `Sec-WebSocket-Key`.

use std::net::SocketAddr;

use serde_json::{Map, Value, json};

use super::upgrade::Request;

/// Headers never forwarded: the sender's token is a Send credential, not the listener's.
const WITHHELD_HEADERS: &[&str] = &["serviceBusAuthorization"];

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
    "Relay-User-Agent",
];

/// Status the sender gets when a listener's `sb-hc-statusCode` is not an error status.
pub const INVALID_REJECT_STATUS: u16 = 502;

/// The rendezvous address for one listener: the listener's own `Host`, the sender's path
/// (suffix included, still encoded) and the sender's own query parameters, then the
/// accept action and the single-use id.
pub fn address(sender: &Request, scheme: &str, listener_host: &str, id: &str) -> String {
    let raw = &sender.raw_path;
    let entity = ["/$hc/", "/%24hc/"]
        .iter()
        .find_map(|prefix| {
            raw.get(..prefix.len())
                .filter(|head| head.eq_ignore_ascii_case(prefix))
                .map(|_| &raw[prefix.len()..])
        })
        .unwrap_or_else(|| raw.trim_start_matches('/'));
    let mut query: Vec<&str> = sender.app_query();
    let action = "sb-hc-action=accept".to_owned();
    let id = format!("sb-hc-id={id}");
    query.push(&action);
    query.push(&id);
    format!(
        "{scheme}://{listener_host}/$hc/{entity}?{}",
        query.join("&")
    )
}

/// The `{"accept":{...}}` JSON text.
pub fn command(address: &str, id: &str, sender: &Request, peer: SocketAddr) -> String {
    json!({
        "accept": {
            "address": address,
            "id": id,
            "connectHeaders": connect_headers(sender),
            "remoteEndpoint": {
                "address": peer.ip().to_string(),
                "port": peer.port(),
            },
        }
    })
    .to_string()
}

/// Every sender header but the token, names canonicalised, repeats joined with `, `.
fn connect_headers(sender: &Request) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in &sender.headers {
        if WITHHELD_HEADERS
            .iter()
            .any(|w| w.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let name = canonical(name);
        match map.get_mut(&name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                map.insert(name, Value::String(value.clone()));
            }
        }
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

/// The status a rejecting listener asked for; anything but a 4xx/5xx becomes 502.
pub fn reject_status(raw: &str) -> u16 {
    raw.trim()
        .parse::<u16>()
        .ok()
        .filter(|s| (400..=599).contains(s))
        .unwrap_or(INVALID_REJECT_STATUS)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn address_keeps_suffix_and_app_query() {
        let cases = [
            (
                "/$hc/hc1",
                "sb-hc-action=connect&sb-hc-token=t",
                "ws://l:1/$hc/hc1?sb-hc-action=accept&sb-hc-id=ID",
            ),
            (
                "/%24hc/hc1/a%20b",
                "x=1&sb-hc-id=s&y",
                "ws://l:1/$hc/hc1/a%20b?x=1&y&sb-hc-action=accept&sb-hc-id=ID",
            ),
        ];
        for (path, query, want) in cases {
            assert_eq!(address(&request(path, query, &[]), "ws", "l:1", "ID"), want);
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
                ("x-custom-thing", "a"),
                ("X-Custom-Thing", "b"),
            ],
        );
        let peer: SocketAddr = "10.1.2.3:50123".parse().expect("literal");
        let text = command("ws://a", "ID", &sender, peer);
        assert!(!text.contains("secret"), "token withheld: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        let a = &v["accept"];
        assert_eq!(a["address"], "ws://a");
        assert_eq!(a["id"], "ID");
        assert_eq!(a["connectHeaders"]["Host"], "relay:9443");
        assert_eq!(a["connectHeaders"]["Sec-WebSocket-Key"], "k==");
        assert_eq!(a["connectHeaders"]["Sec-WebSocket-Version"], "13");
        assert_eq!(a["connectHeaders"]["X-Custom-Thing"], "a, b");
        assert_eq!(a["remoteEndpoint"]["address"], "10.1.2.3");
        assert_eq!(a["remoteEndpoint"]["port"], 50123);
    }

    #[test]
    fn reject_statuses() {
        for (raw, want) in [
            ("403", 403),
            (" 404 ", 404),
            ("200", 502),
            ("abc", 502),
            ("599", 599),
        ] {
            assert_eq!(reject_status(raw), want, "{raw}");
        }
    }
}
