//! Parsing URLs that come from outside (a relay's accept address, a connection string's
//! Endpoint, an MLflow tracking URI, a client's `Host`): the host must be a plain ASCII
//! name (letters, digits, `-`, `.`) or an IP address, checked before the URL parser sees
//! it.
//!
//! Why: the agent carries no Unicode tables for internationalised domain names (the
//! `idna_adapter` stub, 127 KB of a 6 MB binary), and the parser's stub asserts on some
//! hosts it is handed (percent-escapes or non-ASCII next to upper-case letters); with
//! debug assertions on (tests, fuzzing) that is a panic on hostile input. Relay and
//! MLflow hosts are ASCII; an internationalised name is written in its Punycode form
//! (`xn--…`), which passes.

use url::Url;

/// Why a URL from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebUrlError {
    #[error(
        "its host is not a plain ASCII name (letters, digits, '-', '.') or an IP address; write an internationalised name in its Punycode form (xn--...)"
    )]
    Host,
    /// The parser drops tabs and line breaks wherever they are (`w\rss:` reads `wss:`),
    /// which would hide a scheme, a host or the end of a line from any check on the text.
    #[error("it holds a tab or a line break")]
    Control,
    #[error("{0}")]
    Parse(#[from] url::ParseError),
}

/// [`Url::parse`] for a URL from outside; refuses a host that is not a plain ASCII name
/// or an IP address (see the module's documentation for why).
///
/// ```
/// use amlx_agent::web_url::{parse, WebUrlError};
/// assert_eq!(parse("wss://Relay.Example:443/$hc/x").unwrap().host_str(), Some("relay.example"));
/// assert_eq!(parse("https://xn--bcher-kva.example/").unwrap().host_str(), Some("xn--bcher-kva.example"));
/// assert_eq!(parse("wss://b%C3%BCcher.example/"), Err(WebUrlError::Host));
/// assert_eq!(parse("wss://bücher.example/"), Err(WebUrlError::Host));
/// ```
pub fn parse(input: &str) -> Result<Url, WebUrlError> {
    if input.contains(['\t', '\r', '\n']) {
        return Err(WebUrlError::Control);
    }
    if let Some(host) = special_host(input)
        && !plain_host(host)
    {
        return Err(WebUrlError::Host);
    }
    Ok(Url::parse(input)?)
}

/// Schemes whose host the URL standard runs through IDNA processing.
const SPECIAL_SCHEMES: [&str; 6] = ["http", "https", "ws", "wss", "ftp", "file"];

/// The host (with any port) of `input` when its scheme is one whose host the parser
/// maps (WHATWG URL: leading spaces and controls dropped, any run of `/` or `\` after the
/// scheme, user info up to the last `@` except in a file URL); `None` for other schemes.
fn special_host(input: &str) -> Option<&str> {
    let input = input.trim_start_matches(|c: char| c <= ' ');
    let (scheme, rest) = input.split_once(':')?;
    if !SPECIAL_SCHEMES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
    {
        return None;
    }
    let rest = rest.trim_start_matches(['/', '\\']);
    let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..end)?;
    // A file URL has no user info: all of its authority is the host.
    if scheme.eq_ignore_ascii_case("file") {
        return Some(authority);
    }
    Some(
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host),
    )
}

/// A host (and port) made of ASCII letters, digits, `-`, `.` and `:`, or a bracketed
/// IPv6 literal: nothing the parser's name mapping would have to work on. Empty passes
/// (the parser itself refuses a special URL without a host).
fn plain_host(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(v6) => v6
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.' | ']')),
        None => host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts the parser's IDNA stub would have to map are refused before it sees them;
    /// plain names, IP addresses and other schemes' hosts go through.
    #[test]
    fn only_plain_hosts_reach_the_parser() {
        let cases: [(&str, Option<&str>); 20] = [
            ("wss://relay.example/$hc/a?x=%C3%A9", Some("relay.example")),
            ("WSS://RELAY.example:9/", Some("relay.example")),
            ("https://user:p%40ss@Host.example/", Some("host.example")),
            ("http://127.0.0.1:5000/", Some("127.0.0.1")),
            ("ws://[::1]:80/x", Some("[::1]")),
            (
                "https://xn--Bcher-kva.example/",
                Some("xn--bcher-kva.example"),
            ),
            ("sb://b%C3%BCcher/", Some("b%C3%BCcher")),
            ("azureml://bücher/x", Some("b%C3%BCcher")),
            ("wss://b%C3%BCcher.example/", None),
            ("wss://bücher.example/", None),
            ("https:\\\\9zB%bB*&n_Ab/", None),
            ("  https:bü/", None),
            ("wss://ex\u{FFFD}ample/", None),
            ("ws://[::1%25eth0]/", None),
            ("wss://a b/", None),
            ("w\rss:sM\u{FFFD}/", None),
            ("file://1TTT\u{FFFD}Z@Groa7s/r", None),
            ("wss://a\tb.example/", None),
            ("wss://ab.example/\n", None),
            ("not a url", None),
        ];
        for (input, host) in cases {
            let got = parse(input);
            assert_eq!(
                got.as_ref().ok().and_then(|u| u.host_str()),
                host,
                "{input:?}: {got:?}"
            );
        }
    }

    /// The input the connection string fuzzer found: the URL parser alone panics on it
    /// (with debug assertions on, as in tests and fuzzing); through [`parse`] it is refused.
    #[test]
    fn the_fuzzers_find_is_refused_before_the_parser() {
        let crash = format!("wss://Endpharedaccesssig{}\u{FFFD}Ynature=", "Y".repeat(60));
        assert_eq!(parse(&crash), Err(WebUrlError::Host));
        if cfg!(debug_assertions) {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let bare = std::panic::catch_unwind(|| Url::parse(&crash));
            std::panic::set_hook(previous);
            assert!(bare.is_err(), "the parser no longer asserts: {bare:?}");
        }
    }

    /// Random hosts from the characters that made the parser's stub assert (with debug
    /// assertions on, as here): refused or parsed, never a panic.
    #[test]
    fn hostile_hosts_never_panic() {
        let alphabet: Vec<char> = "aAbBzZ09-._=~!$&'()*+,;xXnN%\u{e9}\u{FFFD}@:[]\\\t\r"
            .chars()
            .collect();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut host = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bits = seed;
            for _ in 0..(1 + bits % 14) {
                bits = bits.rotate_left(11) ^ 0x9e37_79b9;
                if bits.is_multiple_of(6) {
                    host.push_str("xn--");
                }
                let at = usize::try_from(bits % alphabet.len() as u64).unwrap_or(0);
                host.push(alphabet.get(at).copied().unwrap_or('a'));
            }
            for scheme in [
                "wss://",
                "https:",
                "http:\\\\",
                "ws:/",
                "w\rss:",
                "h\ttps://",
                "file://",
            ] {
                let _ = parse(&format!("{scheme}{host}/p"));
            }
        }
    }
}
