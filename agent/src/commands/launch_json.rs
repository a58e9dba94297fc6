//! `amlx-agent launch-json`: VS Code attach configurations for a job's debug ports.

use std::io::Write;

use anyhow::Context;

use crate::cli::LaunchJsonArgs;
use crate::config::Settings;
use crate::launch_json::{self, LaunchSpec, WriteOutcome};
use crate::session::DebugMode;

/// Flags win; the port base and the mode otherwise come from the same layered settings
/// `exec` uses (`AMLX_PORT_RANGE`, `AMLX_DEBUG_MODE`, the config file), so the
/// configurations match the job's ports when both sides share a config.
pub fn run(args: &LaunchJsonArgs, settings: &Settings) -> anyhow::Result<i32> {
    let port_base = args.port_base.unwrap_or(settings.ports.range.start);
    let mode = args.mode.unwrap_or(settings.session.mode);
    let targets = match &args.ranks {
        Some(spec) => launch_json::targets_from_ranks(spec, port_base)
            .with_context(|| format!("invalid --ranks {spec:?}"))?,
        None if args.post_mortem && args.ports.is_empty() => Vec::new(),
        None => launch_json::targets_from_ports(&args.ports).context("invalid --ports")?,
    };
    let post_mortem_port = if args.post_mortem {
        anyhow::ensure!(
            mode == DebugMode::Connect,
            "--post-mortem needs connect mode (VS Code listens for whichever rank crashes); \
             in {mode} mode, attach to the port the crash's log line names"
        );
        let port = match args.post_mortem_port {
            Some(port) => port,
            None => port_base
                .checked_sub(1)
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--port-base {port_base} leaves no port below it: pass --post-mortem-port"
                    )
                })?,
        };
        anyhow::ensure!(
            port != 0,
            "--post-mortem-port 0 is not a port VS Code can listen on"
        );
        anyhow::ensure!(
            !targets.iter().any(|t| t.port == port),
            "--post-mortem-port {port} is also a rank's port: pick another"
        );
        Some(port)
    } else {
        None
    };
    if mode == DebugMode::Direct && is_loopback(&args.host) {
        tracing::warn!(
            "direct mode connects VS Code to the node itself: pass --host with the node IP the agent logged"
        );
    }
    let spec = LaunchSpec {
        mode,
        host: args.host.clone(),
        targets,
        local_root: args.local_root.clone(),
        remote_root: args.remote_root.clone(),
        post_mortem_port,
    };
    if args.output.as_os_str() == "-" {
        std::io::stdout()
            .write_all(launch_json::render(&spec).as_bytes())
            .context("could not write to stdout")?;
        return Ok(0);
    }
    let path = &args.output;
    let summary = match (spec.targets.len(), post_mortem_port) {
        (0, _) => format!("\"{}\"", launch_json::POST_MORTEM_NAME),
        (n, None) => format!(
            "{n} configuration(s) and \"{}\"",
            launch_json::COMPOUND_NAME
        ),
        (n, Some(_)) => format!(
            "{n} configuration(s), \"{}\" and \"{}\"",
            launch_json::COMPOUND_NAME,
            launch_json::POST_MORTEM_NAME
        ),
    };
    let done = match launch_json::write(path, &spec)? {
        WriteOutcome::Created => format!("wrote {summary} to new {}\n", path.display()),
        WriteOutcome::Updated { backup } => format!(
            "wrote {summary} to {} (previous version: {})\n",
            path.display(),
            backup.display()
        ),
        WriteOutcome::Unchanged => format!("{} already has {summary}\n", path.display()),
    };
    super::print_out(&done)?;
    if let Some(port) = post_mortem_port {
        super::print_out(&format!(
            "for \"{}\": start it in VS Code, then run `amlx-agent relay listen --forward \
             any={}:{port}` here; the crashed rank's session arrives whatever its port\n",
            launch_json::POST_MORTEM_NAME,
            args.host
        ))?;
    }
    Ok(0)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
