//! Unit tests for `connection_string`.

use super::*;

const AZURE: &str = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc+def/ghi==;EntityPath=hyco";

#[test]
fn azure_string_parses() {
    let cs: ConnectionString = AZURE.parse().expect("valid");
    assert_eq!(cs.host, "ns.servicebus.windows.net");
    assert_eq!(cs.port, None);
    assert_eq!(cs.entity_path.as_deref(), Some("hyco"));
    assert_eq!(
        cs.credentials,
        Credentials::Key {
            name: "RootManageSharedAccessKey".into(),
            key: Secret::new("abc+def/ghi==")
        }
    );
    assert_eq!(
        cs.ws_base(Transport::Tls).expect("tls").as_str(),
        "wss://ns.servicebus.windows.net/"
    );
}

#[test]
fn accepted_variants() {
    let cases: &[(&str, &str, Option<u16>, Option<&str>)] = &[
        // Keys are case-insensitive, empty parts and spaces are dropped.
        (
            ";; endpoint = sb://H:9443/ ;sharedaccesskeyname=n;SHAREDACCESSKEY=k;;",
            "h",
            Some(9443),
            None,
        ),
        (
            "Endpoint=sb://127.0.0.1:1/;SharedAccessSignature=SharedAccessSignature sr=a&sig=b&se=1&skn=n;EntityPath=/a/b/",
            "127.0.0.1",
            Some(1),
            Some("a/b"),
        ),
        (
            "Endpoint=sb://[::1]:7/;SharedAccessKeyName=n;SharedAccessKey=k;OperationTimeout=00:01:30;Authentication=SharedAccessKey",
            "[::1]",
            Some(7),
            None,
        ),
        // An internationalised name in its Punycode form.
        (
            "Endpoint=sb://xn--bcher-kva.example/;SharedAccessKeyName=n;SharedAccessKey=k",
            "xn--bcher-kva.example",
            None,
            None,
        ),
        // A base64 key may happen to end in a part's name and its '=' padding.
        (
            "Endpoint=sb://ns/;SharedAccessKeyName=n;SharedAccessKey=abcdEntityPath=",
            "ns",
            None,
            None,
        ),
        (
            "Endpoint=https://ns/;SharedAccessKeyName=n;SharedAccessKey=k;EntityPath=",
            "ns",
            None,
            None,
        ),
    ];
    for (text, host, port, entity) in cases {
        let cs: ConnectionString = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(cs.host, *host, "{text}");
        assert_eq!(cs.port, *port, "{text}");
        assert_eq!(cs.entity_path.as_deref(), *entity, "{text}");
    }
}

#[test]
fn refused_variants_name_the_problem_not_the_secret() {
    let cases: &[(&str, ConnectionStringError)] = &[
        (
            "Endpoint=sb://h/;SharedAccessKeyName=n;SharedAccessKey=k;Colour=blue",
            ConnectionStringError::UnknownKey("\"Colour\"".into()),
        ),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=n;SharedAccessKey=;topsecret+/k==",
            ConnectionStringError::UnknownKey("of 12 characters (not shown)".into()),
        ),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=nSharedAccessKey=topsecret==",
            ConnectionStringError::MissingSeparator("SharedAccessKeyName", "SharedAccessKey"),
        ),
        (
            "Endpoint=sb://h/SharedAccessKeyName=n;SharedAccessKey=topsecret==",
            ConnectionStringError::MissingSeparator("Endpoint", "SharedAccessKeyName"),
        ),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=n;SharedAccessKey=topsecret==EntityPath=hc",
            ConnectionStringError::MissingSeparator("SharedAccessKey", "EntityPath"),
        ),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=topsecret==;SharedAccessKey=n",
            ConnectionStringError::KeyNameWithEquals,
        ),
        (
            "Endpoint=ftp://user:topsecret@h/;SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::BadEndpoint("ftp://***@h/".into()),
        ),
        (
            "Endpoint=sb://user:topsecret@h/;SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::BadEndpoint("sb://***@h/".into()),
        ),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=n;topsecret",
            ConnectionStringError::NoEquals(3),
        ),
        (
            "SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::NoEndpoint,
        ),
        (
            "Endpoint=h;SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::BadEndpoint("h".into()),
        ),
        (
            "Endpoint=ftp://h/;SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::BadEndpoint("ftp://h/".into()),
        ),
        (
            "Endpoint=sb://bücher.example/;SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::NonAsciiHost("sb://bücher.example/".into()),
        ),
        (
            "Endpoint=wss://bücher.example/;SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::NonAsciiHost("wss://bücher.example/".into()),
        ),
        (
            "Endpoint=sb://b%41d/;SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::BadEndpoint("sb://b%41d/".into()),
        ),
        ("Endpoint=sb://h/", ConnectionStringError::NoCredentials),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=n",
            ConnectionStringError::Incomplete("SharedAccessKeyName", "SharedAccessKey"),
        ),
        (
            "Endpoint=sb://h/;SharedAccessKey=secretvalue",
            ConnectionStringError::Incomplete("SharedAccessKey", "SharedAccessKeyName"),
        ),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=n;SharedAccessKey=k;SharedAccessSignature=s",
            ConnectionStringError::BothCredentials,
        ),
        (
            "Endpoint=sb://h/;endpoint=sb://g/;SharedAccessKeyName=n;SharedAccessKey=k",
            ConnectionStringError::Duplicate("Endpoint"),
        ),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=n;SharedAccessKey=k;OperationTimeout=60",
            ConnectionStringError::BadTimeout("60".into()),
        ),
        (
            "Endpoint=sb://h/;Authentication=Managed Identity",
            ConnectionStringError::UnsupportedAuthentication("Managed Identity".into()),
        ),
    ];
    for (text, expected) in cases {
        let err = text.parse::<ConnectionString>().expect_err(text);
        assert_eq!(&err, expected, "{text}");
        let message = err.to_string();
        assert!(
            !message.contains("secretvalue") && !message.contains("topsecret"),
            "{message}"
        );
    }
    let long = "k".repeat(sas::MAX_KEY_FIELD_CHARS + 1);
    let text = format!("Endpoint=sb://h/;SharedAccessKeyName=n;SharedAccessKey={long}");
    assert_eq!(
        text.parse::<ConnectionString>(),
        Err(ConnectionStringError::TooLong)
    );
}

#[test]
fn debug_hides_keys_and_signatures() {
    let cs: ConnectionString = AZURE.parse().expect("valid");
    let shown = format!("{cs:?}");
    assert!(!shown.contains("abc+def"), "{shown}");
    assert!(shown.contains("RootManageSharedAccessKey"), "{shown}");
    let sig =
        "Endpoint=sb://h/;SharedAccessSignature=SharedAccessSignature sr=x&sig=zzz&se=1&skn=n";
    let shown = format!("{:?}", sig.parse::<ConnectionString>().expect("valid"));
    assert!(!shown.contains("zzz"), "{shown}");
}

#[test]
fn port_and_scheme_reach_the_ws_url() {
    let cases: &[(&str, Transport, Result<&str, ()>)] = &[
        (
            "sb://127.0.0.1:9443/",
            Transport::Tls,
            Ok("wss://127.0.0.1:9443/"),
        ),
        (
            "sb://127.0.0.1:9443/",
            Transport::InsecureWs,
            Ok("ws://127.0.0.1:9443/"),
        ),
        (
            "sb://localhost:80/",
            Transport::InsecureWs,
            Ok("ws://localhost/"),
        ),
        (
            "sb://[::1]:81/",
            Transport::InsecureWs,
            Ok("ws://[::1]:81/"),
        ),
        ("sb://relay.example:9443/", Transport::InsecureWs, Err(())),
        ("sb://10.0.0.1/", Transport::InsecureWs, Err(())),
    ];
    for (endpoint, transport, expected) in cases {
        let text = format!("Endpoint={endpoint};SharedAccessKeyName=n;SharedAccessKey=k");
        let cs: ConnectionString = text.parse().expect("valid");
        let got = cs
            .ws_base(*transport)
            .map(|u| u.to_string())
            .map_err(|_| ());
        assert_eq!(
            got.as_deref().map_err(|_| ()),
            *expected,
            "{endpoint} {transport:?}"
        );
    }
}

#[test]
fn timespans() {
    let cases = [
        ("00:01:00", Some(60.0)),
        ("1.00:00:01", Some(86_401.0)),
        ("00:00:01.5", Some(1.5)),
        ("00:61:00", None),
        ("1:2", None),
        ("", None),
    ];
    for (text, expected) in cases {
        let got = parse_timespan(text).ok().map(|d| d.as_secs_f64());
        assert_eq!(got, expected, "{text}");
    }
}

/// Found by review and confirmed with `cargo fuzz` (target `connection_string`): days or
/// hours too large for `u64` seconds overflowed instead of being refused.
#[test]
fn timeouts_too_large_to_count_are_refused() {
    let cases: [&[u8]; 3] = [
        b"Endpoint=sb://a/;SharedAccessSignature=x;OperationTimeout=999999999999999999.00:00:00",
        b"Endpoint=sb://a/;SharedAccessSignature=x;OperationTimeout=5124095576030432:00:00",
        b"Endpoint=sb://a/;SharedAccessSignature=x;OperationTimeout=213503982334601.07:00:59",
    ];
    for raw in cases {
        let text = String::from_utf8_lossy(raw);
        let err = text
            .parse::<ConnectionString>()
            .expect_err("timeout out of range");
        assert!(
            matches!(err, ConnectionStringError::BadTimeout(_)),
            "{text}: {err}"
        );
    }
}

#[test]
fn token_is_signed_for_the_net_audience() {
    let cs: ConnectionString = "Endpoint=sb://NS:9/;SharedAccessKeyName=n;SharedAccessKey=k"
        .parse()
        .expect("valid");
    let token = cs.token("hc", 100, Duration::from_secs(50)).expect("signs");
    let parsed = sas::SasToken::parse(token.expose()).expect("parses");
    assert_eq!(parsed.expiry, 150);
    assert_eq!(parsed.raw_resource, "http%3A%2F%2Fns%2Fhc%2F");
    assert_eq!(cs.token_expiry(100, Duration::from_secs(50)), Some(150));
    assert_eq!(cs.entity(Some("/x/")), Some("x"));
    assert_eq!(cs.entity(None), None);
}
