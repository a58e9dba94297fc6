//! Starting the step on its target: what `run` refuses to start (a launcher of the job's
//! processes), and launch.json, the attach instructions and the step's process, with the
//! relay's credentials on the way the target takes them.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use super::instructions::instructions;
use super::target::Target;
use super::{Plan, Relay, StepCommand};

/// Writes launch.json, prints how to attach, and starts the step on the target; its
/// stdin lifeline (targets that stop the step when it closes), and the state directory
/// to follow when the target's records are readable here.
pub(super) fn start_step(
    plan: &Plan<'_>,
    target: &mut dyn Target,
    relay: &Relay,
) -> anyhow::Result<(
    std::process::Child,
    Option<std::process::ChildStdin>,
    Option<PathBuf>,
)> {
    let options = plan.options;
    // The in-process relay is reached at the target's own address for it (a forward's
    // end on a remote host); a relay of the settings by its own address.
    let (connection_string, local_relay, insecure_ws, ca_file) = match relay {
        Relay::InProcess(local) => (
            local.connection_string_at(&target.relay_address(local.addr)),
            Some(local.addr),
            true,
            None,
        ),
        Relay::External(external) => {
            anyhow::ensure!(
                external.ca_file.is_none() || target.passes_config(),
                "--ca-file names a file on this machine, which {} cannot read: install the \
                 CA there and set AMLX_RELAY_CA_FILE in the target's env",
                target.describe()
            );
            (
                external.connection_string.clone(),
                None,
                external.insecure_ws,
                external.ca_file.as_deref(),
            )
        }
    };
    let agent = target.agent_path()?;
    let state_dir = target.state_dir(&options.state_dir);
    let command = StepCommand {
        agent: &agent,
        launch: plan.launch,
        command: &options.command,
        ranks: &options.ranks,
        attach_timeout: options.attach_timeout,
        port_range: plan.port_range,
        config: target
            .passes_config()
            .then_some(options.config.as_deref())
            .flatten(),
        connection_string: &connection_string,
        hc: relay.hc(),
        insecure_ws,
        ca_file,
        state_dir: state_dir.as_ref().map(|dirs| dirs.on_target.as_path()),
        post_mortem: options.post_mortem,
        log_args: &options.log_args,
    };
    instructions(plan, target, relay)?;
    let mut cmd = target.command(&command, local_relay)?;
    let input = target.stdin(&command);
    if input.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start the step on {}", target.describe()))?;
    let lifeline = match input {
        Some(bytes) => {
            let mut stdin = child.stdin.take().expect("stdin was piped");
            // A few hundred bytes into an empty pipe: this does not block.
            if let Err(err) = stdin.write_all(&bytes) {
                tracing::warn!("could not hand the step its input: {err}");
            }
            Some(stdin)
        }
        None => None,
    };
    Ok((child, lifeline, state_dir.map(|dirs| dirs.here)))
}

/// Why `run` refuses a command that starts with a launcher of the job's processes: the
/// agent in front of it would see the launcher, which is never a debug target, so the run
/// would wait for no rank and debug nothing. The error names what to give instead.
pub(super) fn launcher_refusal(launcher: &str) -> String {
    const MPI: [&str; 4] = ["mpiexec", "mpirun", "prterun", "srun"];
    if MPI.contains(&launcher) {
        format!(
            "`{launcher}` starts the job's ranks, and `run` starts them itself: give the step \
             alone and the number of ranks, for example `amlx-agent run --ranks-count 4 -- \
             python step.py` (run starts `mpiexec -n 4` with the agent in front of each rank)"
        )
    } else {
        format!(
            "`{launcher}` starts the job's workers itself, so the agent in front of it would \
             debug none of them: give `run` the training script (with --ranks-count N for N \
             ranks under mpiexec), or on the cluster put the agent in front of each worker \
             with the launcher shims (launcher-shims/README.md)"
        )
    }
}
