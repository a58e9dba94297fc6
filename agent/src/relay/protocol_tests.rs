//! Unit tests for `protocol`.

use super::*;

fn base() -> Url {
    Url::parse("wss://ns.example:9443/").expect("valid")
}

/// Found by `cargo fuzz` (target `hc_request_target`): a query name whose sixth byte is
/// inside a character panicked in the `sb-hc-` prefix check, before authentication.
#[test]
fn a_non_ascii_query_name_is_an_app_argument() {
    let cases: [&[u8]; 4] = [
        b"/%24hc/fuzz?sb-hc-action=accept&sb-hc-id=abc&sb-hc-statusCode=404&sb-hc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff-statusDescription=no+Bu\xe3h+port",
        b"/$hc/x?abcde\xc3\xa9=1",
        b"/$hc/x?abcde%C3%A9=1",
        b"/$hc/x?sb-hc\xe2\x82\xac=1&sb-hc-action=listen",
    ];
    for raw in cases {
        let target = String::from_utf8_lossy(raw);
        let req = HcRequest::parse(&target).expect("an HC target");
        assert_eq!(req.app_query.len(), 1, "{target}");
    }
}

#[test]
fn listen_and_connect_urls() {
    assert_eq!(
        listen_url(&base(), "hyco", "id1").as_str(),
        "wss://ns.example:9443/$hc/hyco?sb-hc-action=listen&sb-hc-id=id1"
    );
    assert_eq!(
        connect_url(&base(), "/a/b/", None, &[], "id2").as_str(),
        "wss://ns.example:9443/$hc/a/b?sb-hc-action=connect&sb-hc-id=id2"
    );
    let app = [
        ("x".to_owned(), "1 2".to_owned()),
        ("sb-hc-token".to_owned(), "smuggled".to_owned()),
    ];
    assert_eq!(
        connect_url(&base(), "hc", Some("sub/dir"), &app, "id3").as_str(),
        "wss://ns.example:9443/$hc/hc/sub/dir?x=1+2&sb-hc-action=connect&sb-hc-id=id3"
    );
    assert_eq!(
        accept_url(&base(), "hc/sub", &app, "id4").as_str(),
        "wss://ns.example:9443/$hc/hc/sub?x=1+2&sb-hc-action=accept&sb-hc-id=id4"
    );
}

#[test]
fn reject_appends_status_to_the_address_as_given() {
    let address = "wss://Other-Host:1/$hc/hc?sb-hc-action=accept&sb-hc-id=A";
    assert_eq!(
        reject_url(address, 403, "not today"),
        "wss://Other-Host:1/$hc/hc?sb-hc-action=accept&sb-hc-id=A&sb-hc-statusCode=403&sb-hc-statusDescription=not+today"
    );
}

#[test]
fn request_targets() {
    let req = HcRequest::parse(
        "/$hc/hc/sub?x=1&sb-hc-action=connect&SB-HC-ID=abc&sb-hc-token=SharedAccessSignature%20sr%3Dh%252F%26sig%3Da%252Bb&sb-hc-other=z",
    )
    .expect("valid");
    assert_eq!(req.path, "hc/sub");
    assert_eq!(req.action, Some(Action::Connect));
    assert_eq!(req.id.as_deref(), Some("abc"));
    assert_eq!(
        req.token.as_deref(),
        Some("SharedAccessSignature sr=h%2F&sig=a%2Bb")
    );
    assert_eq!(req.app_query, vec![("x".to_owned(), "1".to_owned())]);

    let reject = HcRequest::parse(
        "/%24hc/hc/?sb-hc-action=accept&sb-hc-id=i&sb-hc-statusCode=403&sb-hc-statusDescription=no+way",
    )
    .expect("valid");
    assert_eq!(reject.path, "hc");
    assert_eq!(reject.status_code, Some(RejectStatus::Status(403)));
    assert_eq!(reject.status_description.as_deref(), Some("no way"));

    let cases = [
        (
            "/hc?sb-hc-action=listen",
            ProtocolError::NotHybridConnection,
        ),
        ("/$hc/?sb-hc-action=listen", ProtocolError::NoEntity),
        (
            "/$hc/hc?sb-hc-action=dance",
            ProtocolError::UnknownAction("dance".into()),
        ),
        (
            "/$hc/hc/x/..?sb-hc-action=connect",
            ProtocolError::DotSegment,
        ),
        (
            "/$hc/hc/./x?sb-hc-action=connect",
            ProtocolError::DotSegment,
        ),
        ("/$hc/hc/%2E%2E/other", ProtocolError::DotSegment),
        ("/$hc/../hc", ProtocolError::DotSegment),
    ];
    for (target, expected) in cases {
        assert_eq!(HcRequest::parse(target), Err(expected), "{target}");
    }
    // Empty segments name what the path without them names (URLs built from a path
    // drop them, so a rendezvous address must too).
    let doubled = HcRequest::parse("/$hc//hc//x/?sb-hc-action=connect").expect("valid");
    assert_eq!(doubled.path, "hc/x");
    let base = Url::parse("ws://relay:1/").expect("literal");
    let address = accept_url(&base, &doubled.path, &[], "id");
    assert_eq!(
        HcRequest::parse(&format!(
            "{}?{}",
            address.path(),
            address.query().unwrap_or("")
        ))
        .expect("valid")
        .path,
        doubled.path
    );
}

#[test]
fn a_status_code_that_is_no_http_status_is_kept_as_sent() {
    let cases = [
        ("403", RejectStatus::Status(403)),
        ("599", RejectStatus::Status(599)),
        ("100", RejectStatus::Status(100)),
        ("abc", RejectStatus::Invalid("abc".into())),
        ("99", RejectStatus::Invalid("99".into())),
        ("600", RejectStatus::Invalid("600".into())),
        ("", RejectStatus::Invalid(String::new())),
        ("%C3%A9", RejectStatus::Invalid("é".into())),
        ("70000", RejectStatus::Invalid("70000".into())),
    ];
    for (raw, want) in cases {
        let target = format!("/$hc/hc?sb-hc-action=accept&sb-hc-id=i&sb-hc-statusCode={raw}");
        let req = HcRequest::parse(&target).expect("an HC target");
        assert_eq!(req.id.as_deref(), Some("i"), "{raw}");
        let problem = want.problem();
        assert_eq!(
            req.status_code.as_ref().and_then(RejectStatus::problem),
            problem,
            "{raw}"
        );
        assert_eq!(req.status_code, Some(want), "{raw}");
    }
}

#[test]
fn url_builders_round_trip_through_the_parser() {
    let url = connect_url(&base(), "hc", Some("s"), &[("k".into(), "v&w".into())], "t");
    let target = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let req = HcRequest::parse(&target).expect("valid");
    assert_eq!(req.path, "hc/s");
    assert_eq!(req.app_query, vec![("k".to_owned(), "v&w".to_owned())]);
    assert_eq!(req.id.as_deref(), Some("t"));
}

#[test]
fn prefixes_longest_first() {
    let got: Vec<&str> = path_prefixes("/a/b/c/").collect();
    assert_eq!(got, ["a/b/c", "a/b", "a"]);
    assert_eq!(path_prefixes("hc").collect::<Vec<_>>(), ["hc"]);
    assert_eq!(path_prefixes("").count(), 0);
}

/// A deep path yields only prefixes that could name a Hybrid Connection: the lookup of a
/// sender's entity hashes at most MAX_ENTITY_PATH_BYTES per candidate, and there are at
/// most half as many candidates, however many segments the path has.
#[test]
fn prefixes_of_a_deep_path_are_only_those_short_enough_to_be_an_entity() {
    let deep = vec!["x"; 16_000].join("/");
    let got: Vec<&str> = path_prefixes(&deep).collect();
    assert!(!got.is_empty());
    assert!(got.len() <= MAX_ENTITY_PATH_BYTES / 2 + 1, "{}", got.len());
    assert!(got.iter().all(|p| p.len() <= MAX_ENTITY_PATH_BYTES));
    assert_eq!(got.last(), Some(&"x"));
    // The longest entity itself is a candidate; one byte more is not.
    let longest = "a".repeat(MAX_ENTITY_PATH_BYTES);
    let sender = format!("{longest}/5678");
    assert_eq!(
        path_prefixes(&sender).collect::<Vec<_>>(),
        [longest.as_str()]
    );
    let too_long = "a".repeat(MAX_ENTITY_PATH_BYTES + 1);
    assert_eq!(path_prefixes(&too_long).count(), 0);
}

#[test]
fn accept_message_round_trip_and_shape() {
    let text = r#"{"accept":{"address":"wss://h/$hc/p?sb-hc-action=accept&sb-hc-id=1","id":"g","connectHeaders":{"Sec-WebSocket-Key":"k","Sec-WebSocket-Version":"13"},"remoteEndpoint":{"address":"1.2.3.4","port":50123}}}"#;
    let msg = ControlMessage::parse(text).expect("valid");
    let ControlMessage::Accept(accept) = &msg else {
        panic!("not an accept: {msg:?}");
    };
    assert_eq!(accept.remote_endpoint.port, 50123);
    assert_eq!(accept.connect_headers["Sec-WebSocket-Key"], "k");
    let again: serde_json::Value = serde_json::from_str(&msg.to_json()).expect("json");
    let original: serde_json::Value = serde_json::from_str(text).expect("json");
    assert_eq!(again, original);

    // A minimal accept (other servers) still parses; ours always sends both fields.
    let minimal =
        ControlMessage::parse(r#"{"accept":{"address":"wss://h/","id":"g"}}"#).expect("valid");
    let json = minimal.to_json();
    assert!(
        json.contains("connectHeaders") && json.contains("remoteEndpoint"),
        "{json}"
    );
}

#[test]
fn other_messages() {
    let renew = ControlMessage::parse(r#"{"renewToken":{"token":"SharedAccessSignature sr=x"}}"#)
        .expect("valid");
    let ControlMessage::RenewToken(r) = &renew else {
        panic!("not a renewToken: {renew:?}");
    };
    assert_eq!(r.token.expose(), "SharedAccessSignature sr=x");
    assert!(
        !format!("{renew:?}").contains("sr=x"),
        "Debug hides the token"
    );
    assert!(
        renew
            .to_json()
            .contains(r#""renewToken":{"token":"SharedAccessSignature sr=x"}"#)
    );

    let cases = [
        (r#"{"request":{"address":"a"}}"#, "request"),
        (r#"{"response":{"statusCode":200}}"#, "response"),
        (r#"{"somethingNew":{}}"#, "unknown"),
        (r#"{}"#, "unknown"),
    ];
    for (text, kind) in cases {
        let got = match ControlMessage::parse(text).expect(text) {
            ControlMessage::Request(_) => "request",
            ControlMessage::Response(_) => "response",
            ControlMessage::Unknown(_) => "unknown",
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(got, kind, "{text}");
    }
    assert!(ControlMessage::parse("not json").is_err());
    assert!(ControlMessage::parse(r#"{"accept":{"id":1}}"#).is_err());
}

#[test]
fn hostile_targets_parse_without_panicking() {
    // (target, expected path or error, expected app query)
    type Case<'a> = (
        &'a str,
        Result<&'a str, ProtocolError>,
        &'a [(&'a str, &'a str)],
    );
    let cases: &[Case] = &[
        // The issue's request: a query name of 5 ASCII bytes then a 2-byte character
        // once decoded, so byte 6 (the `sb-hc-` length) falls inside it.
        (
            "/$hc/x?sb-hc-action=listen&a=%C3%A9%FF",
            Ok("x"),
            &[("a", "é\u{FFFD}")],
        ),
        ("/$hc/x?aaaaa%C3%A9=1", Ok("x"), &[("aaaaaé", "1")]),
        ("/$hc/x?aaaa%C3%A9%C3%A9=1", Ok("x"), &[("aaaaéé", "1")]),
        ("/$hc/x?%E2%82%AC%E2%82%AC=v", Ok("x"), &[("€€", "v")]),
        ("/$hc/x?sb-hc-%C3%A9=dropped", Ok("x"), &[]),
        ("/$hc/x?SB-HC-ID=i", Ok("x"), &[]),
        // Bad escapes pass through as text; lone continuation bytes become U+FFFD.
        (
            "/$hc/x?a=%&b=%G1&c=%2",
            Ok("x"),
            &[("a", "%"), ("b", "%G1"), ("c", "%2")],
        ),
        (
            "/$hc/x?%80%80%80%80%80%80%80=1",
            Ok("x"),
            &[("\u{FFFD}".repeat(7).leak(), "1")],
        ),
        ("/$hc/%C3%A9t%C3%A9/%FF", Ok("été/\u{FFFD}"), &[]),
        ("/$hc/é/ü?ä=ö", Ok("é/ü"), &[("ä", "ö")]),
        ("/$hc/%", Ok("%"), &[]),
        ("/é", Err(ProtocolError::NotHybridConnection), &[]),
        (
            "/%24h%C3%A9/x",
            Err(ProtocolError::NotHybridConnection),
            &[],
        ),
        ("", Err(ProtocolError::NotHybridConnection), &[]),
        (
            "/$hc/x?sb-hc-action=%C3%A9",
            Err(ProtocolError::UnknownAction("é".into())),
            &[],
        ),
        // Kept as sent (RejectStatus::Invalid), for the server to refuse.
        ("/$hc/x?sb-hc-statusCode=%C3%A9", Ok("x"), &[]),
    ];
    for (target, want, query) in cases {
        let got = HcRequest::parse(target);
        assert_eq!(
            got.as_ref().map(|r| r.path.as_str()),
            want.as_ref().copied(),
            "{target}"
        );
        if let Ok(req) = got {
            let want_query: Vec<(String, String)> = query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(req.app_query, want_query, "{target}");
        }
    }
}

#[test]
fn protocol_params_are_recognised_by_bytes() {
    let cases = [
        ("sb-hc-action", true),
        ("SB-HC-X", true),
        ("sb-hc-", true),
        ("sb-hc", false),
        ("", false),
        ("aaaaé", false),
        ("sb-hcé", false),
        ("ééé", false),
        ("€€", false),
    ];
    for (name, want) in cases {
        assert_eq!(is_protocol_param(name), want, "{name:?}");
    }
}

#[test]
fn close_reasons_fit_a_control_frame_at_a_character_boundary() {
    // (reason, expected length in bytes)
    let cases = [
        (String::new(), 0),
        ("token expired".to_owned(), 13),
        ("a".repeat(123), 123),
        ("a".repeat(124), 123),
        ("é".repeat(61) + "a", 123),
        ("é".repeat(62), 122),
        ("a".to_owned() + &"é".repeat(100), 123),
        ("€".repeat(50), 123),
        ("ab".to_owned() + &"€".repeat(50), 122),
        ("😀".repeat(40), 120),
    ];
    for (reason, want) in cases {
        let cut = close_reason(&reason);
        assert_eq!(cut.len(), want, "{reason:?}");
        assert!(reason.starts_with(cut), "{reason:?}");
        assert!(cut.len() <= MAX_CLOSE_REASON_BYTES);
    }
}

#[test]
fn path_prefixes_of_non_ascii_paths() {
    let got: Vec<&str> = path_prefixes("é/ü/€").collect();
    assert_eq!(got, ["é/ü/€", "é/ü", "é"]);
}

#[test]
fn the_port_a_sender_named_is_its_path_suffix() {
    let cases = [
        ("ws://h:1/$hc/debug/5678?sb-hc-action=accept", Some("5678")),
        ("ws://h:1/%24hc/debug/5678/?x=1", Some("5678")),
        ("wss://h/$hc/debug?sb-hc-action=accept", None),
        ("wss://h/$hc/debug/", None),
        ("wss://h/$hc/debugger/5678", None),
        ("wss://h/$hc/other/5678", None),
        ("not a url", None),
        ("wss://h/$hc/debug/%C3%A9", Some("é")),
        ("wss://h/$hc/debug/%FF", Some("\u{FFFD}")),
    ];
    for (address, expected) in cases {
        assert_eq!(
            sender_suffix("debug", address).as_deref(),
            expected,
            "{address}"
        );
    }
}

#[test]
fn a_remote_endpoint_reads_apart_from_its_port() {
    let cases = [
        ("127.0.0.1", 5000, "127.0.0.1:5000"),
        ("::1", 5000, "[::1]:5000"),
        ("fd00::2", 1, "[fd00::2]:1"),
        ("", 0, ":0"),
    ];
    for (address, port, want) in cases {
        let remote = RemoteEndpoint {
            address: address.into(),
            port,
        };
        assert_eq!(remote.to_string(), want);
    }
}
