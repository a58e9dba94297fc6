//! The text form of every setting, parsed the same way from a flag, a variable or the file.
//!
//! Messages quote the offending text: none of these values is a secret.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::cli::LogFormat;
use crate::inject::InjectMode;
use crate::policy::RankSpec;
use crate::ports::PortRange;
use crate::session::{DebugMode, FailurePolicy};

use super::duration::parse_duration;

/// A setting's value parsed from text, with a message that quotes the text and the
/// expected form.
pub trait FromConfig: Sized {
    fn from_config(text: &str) -> Result<Self, String>;
}

/// Implements `FromConfig` through the type's `FromStr`, whose message is already ours.
macro_rules! via_from_str {
    ($($ty:ty),+) => {$(
        impl FromConfig for $ty {
            fn from_config(text: &str) -> Result<Self, String> {
                text.parse::<$ty>().map_err(|e| e.to_string())
            }
        }
    )+};
}

via_from_str!(RankSpec, PortRange, DebugMode, FailurePolicy, InjectMode);

impl FromConfig for Duration {
    fn from_config(text: &str) -> Result<Self, String> {
        parse_duration(text).map_err(|e| e.to_string())
    }
}

impl FromConfig for bool {
    fn from_config(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!(
                "invalid switch {text:?} (expected 1, true, yes, on or 0, false, no, off)"
            )),
        }
    }
}

/// The node-slot bound: a count of at least one (zero targets is `--no-debug`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetLimit(pub u32);

impl FromConfig for TargetLimit {
    fn from_config(text: &str) -> Result<Self, String> {
        match text.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(TargetLimit(n)),
            _ => Err(format!(
                "invalid target count {text:?} (expected a whole number from 1 to {})",
                u32::MAX
            )),
        }
    }
}

/// How many post-mortem sessions a node holds at once: 1 to
/// [`crate::post_mortem::slots::MAX_SLOTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostMortemLimit(pub u32);

impl FromConfig for PostMortemLimit {
    fn from_config(text: &str) -> Result<Self, String> {
        let max = crate::post_mortem::slots::MAX_SLOTS;
        match text.trim().parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(PostMortemLimit(n)),
            _ => Err(format!(
                "invalid post-mortem session count {text:?} (expected a whole number from 1 to {max})"
            )),
        }
    }
}

/// The most connections any limit may allow (`relay serve`'s `max_connections`, a key's,
/// `--max-tunnels`): each holds a descriptor, and this is the largest open-file limit
/// Linux lets a process have (`fs.nr_open`'s maximum). Past it the number means nothing,
/// and far past it (2^61) the slot counter could not hold it: tokio's semaphore panicked.
pub const MOST_CONNECTIONS: usize = 1_073_741_816;

/// The cap on relayed connections one `relay listen` or `relay connect` serves at once:
/// a count from 1 to [`MOST_CONNECTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelLimit(pub usize);

impl FromConfig for TunnelLimit {
    fn from_config(text: &str) -> Result<Self, String> {
        match text.trim().parse::<usize>() {
            Ok(n) if (1..=MOST_CONNECTIONS).contains(&n) => Ok(TunnelLimit(n)),
            _ => Err(format!(
                "invalid tunnel count {text:?} (expected a whole number from 1 to \
                 {MOST_CONNECTIONS})"
            )),
        }
    }
}

/// How many relayed connections `relay connect` keeps open ahead of local connections:
/// a count from 0 to [`MAX_SPARES`](crate::relay::client::spare::MAX_SPARES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpareTunnels(pub u8);

impl FromConfig for SpareTunnels {
    fn from_config(text: &str) -> Result<Self, String> {
        let max = crate::relay::client::spare::MAX_SPARES;
        match text.trim().parse::<u8>() {
            Ok(n) if n <= max => Ok(SpareTunnels(n)),
            _ => Err(format!(
                "invalid spare tunnel count {text:?} (expected a whole number from 0 to {max})"
            )),
        }
    }
}

impl FromConfig for IpAddr {
    fn from_config(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("invalid IP address {text:?} (expected e.g. 10.0.0.4 or fd00::4)"))
    }
}

/// The address a node is announced at (`--node-ip`, `AMLX_NODE_IP`, `[node] ip`): one a
/// debugger can connect to. A broadcast or multicast address was taken:
/// debugpy listened on it, `status` said it waited for a debugger, and the step waited out
/// its attach timeout for an endpoint nobody could reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIp(pub IpAddr);

impl FromConfig for NodeIp {
    fn from_config(text: &str) -> Result<Self, String> {
        let ip = IpAddr::from_config(text)?;
        node_ip(ip).map(NodeIp)
    }
}

/// `--node-ip`'s parser: the same text and checks as `AMLX_NODE_IP` and `[node] ip`.
pub fn parse_node_ip(text: &str) -> Result<IpAddr, String> {
    NodeIp::from_config(text).map(|NodeIp(ip)| ip)
}

/// `ip` when a debugger can connect to it; otherwise why not.
fn node_ip(ip: IpAddr) -> Result<IpAddr, String> {
    // The unspecified address stays allowed: in direct mode debugpy then listens on every
    // interface, which a loopback forward (`kubectl port-forward`) relies on.
    let what = if ip.is_multicast() {
        "a multicast address"
    } else if ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        "the broadcast address"
    } else {
        return Ok(ip);
    };
    Err(format!(
        "node IP {ip} is {what}: a debugger cannot connect to it; give this node's own address"
    ))
}

impl FromConfig for SocketAddr {
    fn from_config(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| {
            format!("invalid address {text:?} (expected IP:PORT, e.g. 127.0.0.1:9351 or [::]:443)")
        })
    }
}

impl FromConfig for LogFormat {
    fn from_config(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "invalid log format {text:?}: expected one of text, json"
            )),
        }
    }
}

impl FromConfig for PathBuf {
    fn from_config(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
}

impl FromConfig for String {
    fn from_config(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

/// A file value read through `FromConfig`, so the file reports the same message a flag
/// would. Integers are accepted as text too (`ranks = 0`, `max_targets_per_node = 2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<T>(pub T);

struct ParsedVisitor<T>(PhantomData<T>);

impl<T: FromConfig> ParsedVisitor<T> {
    fn parse<E: de::Error>(text: &str) -> Result<Parsed<T>, E> {
        T::from_config(text).map(Parsed).map_err(E::custom)
    }
}

impl<'de, T: FromConfig> Visitor<'de> for ParsedVisitor<T> {
    type Value = Parsed<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a number or true/false")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed<T>, E> {
        Self::parse(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Parsed<T>, E> {
        Self::parse(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Parsed<T>, E> {
        Self::parse(&v.to_string())
    }

    // Past 64 bits, a float or a boolean: the setting's own parser says what is wrong
    // with it, as for a flag ("invalid type: integer ... as i128, expected a string").
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Parsed<T>, E> {
        Self::parse(&v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Parsed<T>, E> {
        Self::parse(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Parsed<T>, E> {
        // `2.0` as written (Display would drop the `.0` and a count would take it).
        Self::parse(&format!("{v:?}"))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Parsed<T>, E> {
        Self::parse(&v.to_string())
    }
}

impl<'de, T: FromConfig> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ParsedVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches() {
        for (text, want) in [
            ("1", Some(true)),
            ("true", Some(true)),
            ("YES", Some(true)),
            ("on", Some(true)),
            ("0", Some(false)),
            ("False", Some(false)),
            ("no", Some(false)),
            ("off", Some(false)),
            ("maybe", None),
            ("2", None),
        ] {
            assert_eq!(bool::from_config(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn target_limits() {
        for (text, want) in [
            ("1", Some(1)),
            (" 8 ", Some(8)),
            ("0", None),
            ("-1", None),
            ("x", None),
        ] {
            assert_eq!(
                TargetLimit::from_config(text).ok().map(|t| t.0),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn spare_tunnel_counts() {
        for (text, want) in [
            ("0", Some(0)),
            (" 8 ", Some(8)),
            ("9", None),
            ("256", None),
            ("-1", None),
            ("one", None),
            ("", None),
        ] {
            assert_eq!(
                SpareTunnels::from_config(text).ok().map(|t| t.0),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn tunnel_limits() {
        for (text, want) in [
            ("1", Some(1)),
            (" 5000 ", Some(5000)),
            ("0", None),
            ("-1", None),
            ("1e3", None),
            ("", None),
        ] {
            assert_eq!(
                TunnelLimit::from_config(text).ok().map(|t| t.0),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn messages_quote_the_text() {
        let cases: Vec<(String, &str)> = vec![
            (
                IpAddr::from_config("10.0.0.300").expect_err("bad ip"),
                "\"10.0.0.300\"",
            ),
            (
                SocketAddr::from_config("localhost").expect_err("bad addr"),
                "\"localhost\"",
            ),
            (
                LogFormat::from_config("xml").expect_err("bad format"),
                "\"xml\"",
            ),
            (
                Duration::from_config("soon").expect_err("bad duration"),
                "\"soon\"",
            ),
            (
                DebugMode::from_config("attach").expect_err("bad mode"),
                "\"attach\"",
            ),
        ];
        for (message, quoted) in cases {
            assert!(message.contains(quoted), "{message}");
        }
    }
}
