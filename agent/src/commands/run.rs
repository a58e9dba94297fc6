//! `amlx-agent run` and `amlx-agent targets`: the command line and settings into
//! `run::Options` and a target.

use std::path::Path;

use anyhow::Context as _;

use crate::cli::{GlobalArgs, RunArgs, TargetsListArgs};
use crate::config::{Settings, read_project_targets};
use crate::ports;
use crate::publish;
use crate::role::ProcessEnv;
use crate::run::{self, target};

/// How `run`'s lines start.
const LABEL: &str = "amlx-agent run";
/// The variable `--agent-binary` falls back to.
const ENV_AGENT_BINARY: &str = "AMLX_AGENT_BINARY";

pub fn run(args: &RunArgs, settings: &Settings, global: &GlobalArgs) -> anyhow::Result<i32> {
    let config = global.config.as_deref();
    let project = run::project_dir(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    let project_targets = read_project_targets(&project)?;
    let spec = target::choose(&args.target, project_targets.as_ref(), &settings.targets)?;
    let overrides = target::Overrides {
        image: args.image.clone(),
        build: args.build.clone(),
        agent_binary: args.agent_binary.clone().or_else(|| {
            std::env::var_os(ENV_AGENT_BINARY)
                .filter(|v| !v.is_empty())
                .map(Into::into)
        }),
    };
    let mut target = target::open(&spec, &overrides, &project)?;
    let state_dir = publish::state_dir(settings.state_dir.as_deref(), &ProcessEnv)?;
    let options = run::Options {
        label: LABEL,
        command: args.command.clone(),
        project,
        vscode_port: args.vscode_port,
        attach_timeout: args.attach_timeout,
        ranks_count: args.ranks_count.or(spec.ranks_count).unwrap_or(1),
        one_process_without_mpiexec: false,
        ranks: args
            .ranks
            .clone()
            .or_else(|| spec.ranks.clone())
            .unwrap_or_else(|| "0".to_owned()),
        port_range: args.port_range,
        config: config.map(Path::to_path_buf),
        state_dir,
        lock_dir: ports::lock_dir(settings.ports.lock_dir.as_deref()).ok(),
        hint: None,
        relay: relay_choice(args, settings)?,
        post_mortem: args.post_mortem,
        log_args: super::step_log_args(global, settings.log_format),
    };
    run::run(&options, target.as_mut())
}

/// The in-process relay, or with `--external-relay` the one of the settings (the same
/// flags, variables and config keys `exec` and `relay listen` take).
fn relay_choice(args: &RunArgs, settings: &Settings) -> anyhow::Result<run::RelayChoice> {
    if !args.external_relay {
        return Ok(run::RelayChoice::InProcess);
    }
    let (endpoint, connection_string) = super::relay::endpoint_and_secret(&args.relay, settings)
        .context("--external-relay needs the relay's settings")?;
    Ok(run::RelayChoice::External(run::ExternalRelay {
        // Plain ws exactly when the endpoint was resolved without TLS.
        insecure_ws: endpoint.tls.is_none(),
        endpoint: std::sync::Arc::new(endpoint),
        connection_string,
        ca_file: args
            .relay
            .ca_file
            .clone()
            .or_else(|| settings.relay.ca_file.clone()),
    }))
}

/// `targets list`: every named target, where it is defined, and (unless `--no-check`)
/// whether it is reachable. Exits 1 when one is not.
pub fn list_targets(args: &TargetsListArgs, settings: &Settings) -> anyhow::Result<i32> {
    let project = run::project_dir(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    let mut targets = settings.targets.clone();
    // The project's file wins for a name in both, as `run -t NAME` does.
    targets.extend(read_project_targets(&project)?.unwrap_or_default());
    if targets.is_empty() {
        super::print_out(&format!(
            "no named targets: add [targets.NAME] tables to {} or the config file \
             (kind = \"local\" | \"docker\" | \"ssh\")\n",
            project.join(crate::config::PROJECT_TARGETS_FILE).display()
        ))?;
        return Ok(0);
    }
    let mut unreachable = 0;
    for spec in targets.values() {
        let place = match (&spec.user, &spec.host, spec.port) {
            (_, None, _) => spec.image.clone().unwrap_or_default(),
            (user, Some(host), port) => format!(
                "{}{host}{}",
                user.as_ref().map(|u| format!("{u}@")).unwrap_or_default(),
                port.map(|p| format!(":{p}")).unwrap_or_default()
            ),
        };
        let status = if args.no_check {
            String::new()
        } else {
            match target::check(spec, &project) {
                Ok(seen) => format!("  reachable: {seen}"),
                Err(why) => {
                    unreachable += 1;
                    format!("  UNREACHABLE: {why}")
                }
            }
        };
        super::print_out(&format!(
            "{}  {}  {place}  ({}){status}\n",
            spec.name, spec.kind, spec.defined_at
        ))?;
    }
    Ok(i32::from(unreachable > 0))
}
