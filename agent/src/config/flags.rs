//! The flag layer: clap hands over raw strings, parsed here so errors name the flag.

use crate::policy::RankSpec;
use crate::ports::PortRange;

use super::value::{FromConfig, PostMortemLimit, SpareTunnels, TargetLimit, TunnelLimit};
use super::{ConfigError, Flags, Settings};

/// Parses one flag value; the error names the flag and quotes the value.
fn parse<T: FromConfig>(flag: &str, value: Option<&String>) -> Result<Option<T>, ConfigError> {
    value
        .map(|v| T::from_config(v).map_err(|m| ConfigError::new(format!("{flag}: {m}"))))
        .transpose()
}

/// Applies every flag that was given over `s`.
pub(super) fn apply(flags: &Flags<'_>, s: &mut Settings) -> Result<(), ConfigError> {
    if let Some(format) = flags.log_format {
        s.log_format = Some(format);
    }
    if let Some(p) = flags.policy {
        if let Some(enabled) = p.debug_flag() {
            s.policy.enabled = enabled;
        }
        if let Some(v) = parse::<RankSpec>("--ranks", p.ranks.as_ref())? {
            s.policy.ranks = v;
        }
        let limit =
            parse::<TargetLimit>("--max-targets-per-node", p.max_targets_per_node.as_ref())?;
        if let Some(TargetLimit(v)) = limit {
            s.policy.max_targets_per_node = Some(v);
        }
    }
    if let Some(p) = flags.ports {
        if let Some(v) = parse::<PortRange>("--port-range", p.port_range.as_ref())? {
            s.ports.range = v;
        }
        if let Some(dir) = &p.lock_dir {
            s.ports.lock_dir = Some(dir.clone());
        }
    }
    if let Some(n) = flags.node
        && let Some(ip) = n.node_ip
    {
        s.node_ip = Some(ip);
    }
    if let Some(p) = flags.session {
        if let Some(v) = parse("--mode", p.mode.as_ref())? {
            s.session.mode = v;
        }
        if let Some(v) = parse("--on-debug-failure", p.on_debug_failure.as_ref())? {
            s.session.on_failure = v;
        }
        if let Some(v) = parse("--attach-timeout", p.attach_timeout.as_ref())? {
            s.session.attach_timeout = v;
        }
        if let Some(v) = parse("--inject", p.inject.as_ref())? {
            s.session.inject = v;
        }
        // A plain switch: present means on; off comes from a lower layer or the default.
        if p.wait_for_client {
            s.session.wait_for_client = true;
        }
        if p.post_mortem {
            s.session.post_mortem = true;
        }
        if let Some(v) = parse("--post-mortem-timeout", p.post_mortem_timeout.as_ref())? {
            s.session.post_mortem_timeout = v;
        }
        if let Some(v) = parse::<PostMortemLimit>("--post-mortem-max", p.post_mortem_max.as_ref())?
        {
            s.session.post_mortem_max = v.0;
        }
    }
    if let Some(dir) = flags.state_dir {
        s.state_dir = Some(dir.to_owned());
    }
    if let Some(r) = flags.relay {
        // Flags only: AMLX_RELAY_HC, AMLX_RELAY_CONNECTION_STRING_FILE and AMLX_RELAY_CA_FILE
        // are read by `env` (clap reads no variable, so one that is not UTF-8 is a config
        // error here rather than a refused command line).
        super::set_credentials(&mut s.relay, None, r.connection_string_file.clone());
        if let Some(hc) = r.hc.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
            s.relay.hybrid_connection = Some(hc.to_owned());
        }
        if let Some(ca) = &r.ca_file {
            s.relay.ca_file = Some(ca.clone());
        }
        if r.insecure_ws {
            s.relay.insecure_ws = true;
        }
    }
    if let Some(TunnelLimit(v)) = parse::<TunnelLimit>("--max-tunnels", flags.max_tunnels)? {
        s.relay.max_tunnels = v;
    }
    if let Some(SpareTunnels(v)) = parse::<SpareTunnels>("--spare-tunnels", flags.spare_tunnels)? {
        s.relay.spare_tunnels = v;
    }
    Ok(())
}
