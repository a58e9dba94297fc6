//! One debug session: modes, failure policy, sidecar lifecycle and attach timeout.

pub mod dap;
pub mod sidecar;

use serde::Serialize;

/// Who listens and who connects (DESIGN.md "Debug modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DebugMode {
    /// debugpy connects out to 127.0.0.1:port; the sidecar relays it as a sender.
    #[default]
    Connect,
    /// debugpy listens on 127.0.0.1:port; the sidecar is the relay listener.
    Listen,
    /// debugpy listens on the node IP; no relay.
    Direct,
}

/// What happens when debugging cannot be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Run the step without a debugger and log why.
    #[default]
    Continue,
    /// Do not run the step; exit non-zero.
    Fail,
}

macro_rules! keyword_enum {
    ($ty:ty, $what:literal, $($text:literal => $variant:expr),+ $(,)?) => {
        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($variant),)+
                    _ => Err(format!(concat!("invalid ", $what, " {:?}: expected one of {}"), s,
                        [$($text),+].join(", "))),
                }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                $(if *self == $variant { return f.write_str($text); })+
                Ok(())
            }
        }
    };
}
pub(crate) use keyword_enum;

keyword_enum!(DebugMode, "debug mode", "connect" => DebugMode::Connect, "listen" => DebugMode::Listen, "direct" => DebugMode::Direct);
keyword_enum!(FailurePolicy, "failure policy", "continue" => FailurePolicy::Continue, "fail" => FailurePolicy::Fail);
