//! Unit tests for `sas`: the documented vectors, parsing and verification (authorisation
//! against the server's keys is tested in `relay::server::auth`).

use super::*;

const KEY: &str = "SGVsbG9Xb3JsZEtleUZvclRlc3RpbmdPbmx5IQ==";
const KEY_NAME: &str = "RootManageSharedAccessKey";
const EXPIRY: u64 = 1_700_000_000;
const URI: &str = "http://contoso.servicebus.windows.net/hyco/";
const SIG: &str = "V2vY/GGpVAbOe3TOt+FANHiotMuW/1qhr7k4tXr1/3I=";
const TOKEN: &str = "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F&sig=V2vY%2FGGpVAbOe3TOt%2BFANHiotMuW%2F1qhr7k4tXr1%2F3I%3D&se=1700000000&skn=RootManageSharedAccessKey";
const SIG_NO_SLASH: &str = "ReBn5R+BmoZRfuQ+hznjk77QqFCm40bsUISudBOqzZU=";
const SIG_DECODED_KEY: &str = "+YqzGWp4u+wBLg7i1zQ9G1iMmAba79GQZvsU8xEfOE4=";

fn key() -> Secret {
    Secret::new(KEY)
}

#[test]
fn documented_vector_with_trailing_slash() {
    assert_eq!(signature(URI, &key(), EXPIRY), SIG);
    let token = sign(URI, KEY_NAME, &key(), EXPIRY).expect("short key");
    assert_eq!(token.expose(), TOKEN);
}

#[test]
fn documented_vector_without_trailing_slash() {
    let uri = "http://contoso.servicebus.windows.net/hyco";
    assert_eq!(signature(uri, &key(), EXPIRY), SIG_NO_SLASH);
}

#[test]
fn documented_wrong_vector_is_the_base64_decoded_key() {
    // The documented "wrong" value is what a client gets by base64-decoding the key first;
    // we must never produce it.
    let decoded = BASE64.decode(KEY).expect("vector key is base64");
    let decoded = Secret::new(String::from_utf8(decoded).expect("vector key decodes to text"));
    assert_eq!(signature(URI, &decoded, EXPIRY), SIG_DECODED_KEY);
    assert_ne!(signature(URI, &key(), EXPIRY), SIG_DECODED_KEY);
}

#[test]
fn documented_token_verifies() {
    let token = SasToken::parse(TOKEN).expect("vector parses");
    assert_eq!(token.key_name, KEY_NAME);
    assert_eq!(token.signature, SIG);
    let audience = token
        .verify(&key(), EXPIRY - 1)
        .expect("valid before expiry");
    assert_eq!(audience.host, "contoso.servicebus.windows.net");
    assert_eq!(audience.path, "hyco");
}

#[test]
fn query_form_is_decoded_once() {
    let query: String = url::form_urlencoded::byte_serialize(TOKEN.as_bytes()).collect();
    let token = SasToken::parse_query(&query).expect("query token parses");
    token
        .verify(&key(), EXPIRY - 1)
        .expect("query token verifies");
}

/// A key name with characters a query string gives meaning to comes back whole: it was
/// put in `skn=` unencoded, so `a&b` reached the relay as `a`.
#[test]
fn a_key_name_is_encoded_and_comes_back_whole() {
    for name in ["a&b", "50%", "x+y z", "é", "RootManageSharedAccessKey"] {
        let token = sign("http://h/hc", name, &key(), EXPIRY).expect("short key");
        let parsed = SasToken::parse(token.expose()).expect("parses");
        assert_eq!(parsed.key_name, name, "{}", token.expose());
        parsed.verify(&key(), EXPIRY - 1).expect("verifies");
    }
}

#[test]
fn hyco_ws_style_audience_with_port_and_no_slash_verifies() {
    // hyco-ws signs the URI with its port and without a trailing slash.
    let token = sign("http://127.0.0.1:9443/a/b", "k", &key(), EXPIRY).expect("short key");
    let audience = SasToken::parse(token.expose())
        .and_then(|t| t.verify(&key(), EXPIRY - 10))
        .expect("verifies");
    assert_eq!(
        audience,
        Audience {
            host: "127.0.0.1".into(),
            path: "a/b".into()
        }
    );
}

#[test]
fn lower_case_escapes_are_verified_over_the_raw_bytes() {
    // A client writing %2f instead of %2F: the HMAC covers its bytes, not our re-encoding.
    let raw_sr = "http%3a%2f%2fhost%2fhc%2f";
    let sig = BASE64.encode(hmac(&key(), raw_sr, "99"));
    let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
    let token = format!("SharedAccessSignature sr={raw_sr}&sig={sig}&se=99&skn=k");
    let audience = SasToken::parse(&token)
        .and_then(|t| t.verify(&key(), 98))
        .expect("verifies");
    assert_eq!(audience.path, "hc");
}

#[test]
fn audience_normalisation() {
    let cases = [
        (
            "http%3A%2F%2Fns.servicebus.windows.net%2Fhc%2F",
            "ns.servicebus.windows.net",
            "hc",
        ),
        (
            "https%3A%2F%2FNS.example%3A9443%2FA%2FB",
            "ns.example",
            "a/b",
        ),
        ("sb%3A%2F%2Fns%2F", "ns", ""),
        ("ns%2Fhc", "ns", "hc"),
        ("http%3A%2F%2F%5B%3A%3A1%5D%3A80%2Fhc", "[::1]", "hc"),
    ];
    for (raw, host, path) in cases {
        let a = Audience::from_raw(raw).expect(raw);
        assert_eq!((a.host.as_str(), a.path.as_str()), (host, path), "{raw}");
    }
}

#[test]
fn net_style_audience() {
    assert_eq!(audience("NS.example", "/Hyco"), "http://ns.example/hyco/");
    assert_eq!(audience("ns", ""), "http://ns/");
}

#[test]
fn over_long_key_fields_are_refused() {
    let long = "k".repeat(MAX_KEY_FIELD_CHARS + 1);
    assert_eq!(sign(URI, &long, &key(), 1), Err(SasError::TooLong));
    assert_eq!(
        sign(URI, "k", &Secret::new(long), 1),
        Err(SasError::TooLong)
    );
    let ok = "k".repeat(MAX_KEY_FIELD_CHARS);
    sign(URI, &ok, &Secret::new(ok.clone()), 1).expect("256 characters are allowed");
}

/// Key names are shown in refusals; what looks like a key (a connection string that lost
/// its `;` or swapped its fields sends the key as the name) is shown only by its length.
#[test]
fn a_key_in_the_place_of_its_name_is_not_shown() {
    let cases = [
        ("RootManageSharedAccessKey", true),
        ("nobody", true),
        ("team-a.listen_2024", true),
        ("my-team-relay-listen-policy-for-debugging", true),
        ("Zm9vYmFyLWJvdGgta2V5LWZvci10ZXN0cw==", false),
        ("Zm9vYmFyLWJvdGgta2V5LWZvci10ZXN0cw", false),
        (
            "3f9a1c2e7b4d5a6f8c9b0a1f3f9a1c2e7b4d5a6f8c9b0a1f3f9a1c2e7b4d5a6f",
            false,
        ),
        ("aB3_-xY9zQ8wV7uT6sR5qP4oN3mL2kJ1iH0gF", false),
        ("", false),
        ("bad name", false),
        ("é", false),
    ];
    for (name, shown) in cases {
        let text = shown_key_name(name);
        assert_eq!(
            text.contains(name) && !name.is_empty(),
            shown,
            "{name:?}: {text}"
        );
    }
}
