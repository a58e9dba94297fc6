//! `amlx-agent exec`: decide, reserve, announce, then become (or supervise) the step.
//!
//! Non-targets take the shortest path: config, role, decision, then `execve`. No async
//! runtime, no network, no lock.

pub(super) mod target;

use std::ffi::OsString;

use crate::cli::ExecArgs;
use crate::config::{ConfigError, Settings};
use crate::policy::{self, Ancestor, StepFacts, Verdict};
use crate::process::lineage::{self, Lineage, StepKind};
use crate::process::{self, ProcessMode, Step};
use crate::role::{self, Detection, ProcessEnv};

pub fn run(args: &ExecArgs, settings: Result<Settings, ConfigError>) -> i32 {
    let lineage = lineage::current(&ProcessEnv);
    if let Lineage::Step {
        agent_pid,
        kind: StepKind::DebuggedTarget,
    } = lineage
    {
        // An agent already runs this very process as a debugged target (a nested
        // `amlx-agent exec` inside it): a second debugger could only get in the way.
        tracing::info!(
            "amlx-agent (pid {agent_pid}) already debugs this process; running the command as is"
        );
        let step = Step {
            argv: args.command.clone(),
            ..Step::default()
        };
        return process::run(ProcessMode::Replace, &step);
    }
    // Otherwise an agent above decided for another program in this process (a shell
    // that then ran `exec amlx-agent exec -- python ...`): decide again, for this one.
    let settings = match settings {
        Ok(settings) => Some(settings),
        Err(err) => {
            tracing::error!("{err}; running the step without debugging");
            None
        }
    };
    let detection = super::detect_role(&args.role);
    let facts = step_facts(&args.command, lineage, &detection);
    let decision = match &settings {
        Some(settings) => policy::decide_step(&settings.policy, &detection.role, &facts),
        None => policy::decide(&policy::Policy::default(), &detection.role),
    };
    let mode = process_mode(args);
    let mut step = Step {
        argv: args.command.clone(),
        ..Step::default()
    };
    step.env = role_env(&detection);
    step.env.extend(lineage::step_env(mode));
    if let Some(settings) = settings.as_ref().filter(|s| s.session.post_mortem) {
        // The step's Python children come back through the launcher shims as `exec`
        // without this line's flags: they read these.
        step.env.extend(crate::post_mortem::step_env(
            settings.session.post_mortem_timeout,
            settings.session.post_mortem_max,
        ));
    }
    match (decision.verdict, &settings) {
        (Verdict::NotTarget, _) | (_, None) => {
            let debugging = settings.as_ref().is_some_and(|s| s.policy.enabled);
            if debugging && matches!(facts.kind, policy::ProcessKind::Launcher(_)) {
                // Said at info: with debugging on, the agent in front of a launcher is
                // either the shims at work (one line per node) or a command line that
                // will debug nothing, which the user must hear about.
                tracing::info!(
                    "not a debug target: {}; to debug them, the agent goes after the \
                     launcher (`mpiexec -n 4 amlx-agent exec -- python step.py`) or the \
                     launcher shims bring them under it",
                    decision.reason
                );
            } else {
                tracing::debug!(reason = %decision.reason, "not a debug target");
            }
            // The shortest path discovers nothing: the node IP is exported when it was
            // given (--node-ip, AMLX_NODE_IP, [node] ip), detected only for targets.
            if let Some(ip) = settings.as_ref().and_then(|s| s.node_ip) {
                step.env.push(env_pair("AMLX_NODE_IP", &ip.to_string()));
            }
            let kind = facts.undebugged_kind();
            mark_undebugged(&mut step, kind);
            if let Some(settings) = &settings
                && settings.session.post_mortem
            {
                hook_post_mortem(&mut step, args.command.len());
            }
            process::run(mode, &step)
        }
        (_, Some(settings)) => target::run(
            settings,
            &detection,
            &decision,
            &facts,
            mode,
            step,
            args.relay.token_ttl,
        ),
    }
}

/// `--post-mortem`: a Python step runs behind the unhandled-exception hook
/// (`post_mortem`); anything else runs as it is, and the log says why.
fn hook_post_mortem(step: &mut Step, command_len: usize) {
    let python = match crate::inject::python_argv::parse(&step.argv) {
        Ok(python) => python,
        Err(why) => {
            tracing::debug!("no post-mortem hook: {why}");
            return;
        }
    };
    if let Err(why) = crate::post_mortem::hookable(&python) {
        tracing::debug!("no post-mortem hook: {why}");
        return;
    }
    let helper = std::env::current_exe().ok().and_then(|agent| {
        let args: Vec<OsString> = std::env::args_os().collect();
        crate::post_mortem::helper_argv(&agent, &args, command_len)
    });
    let Some(helper) = helper else {
        tracing::warn!(
            "no post-mortem hook: this agent's path or options are not UTF-8 text; the step \
             runs without it"
        );
        return;
    };
    let hooked = crate::post_mortem::rewrite(&python, &helper);
    step.argv = hooked.argv;
    step.env.extend(hooked.env);
}

/// What the command line and the agents above say about this process.
pub(crate) fn step_facts(
    command: &[OsString],
    lineage: Lineage,
    detection: &Detection,
) -> StepFacts {
    let same_role_ancestor = match lineage {
        Lineage::Descendant {
            agent_pid,
            ancestor,
        } if role::matches_exported(&ProcessEnv, &detection.role) => Some(Ancestor {
            agent_pid,
            kind: ancestor,
        }),
        _ => None,
    };
    StepFacts {
        kind: policy::kind_of(command),
        same_role_ancestor,
    }
}

/// Marks a step that runs without the agent's debugger: `AMLX_DEBUG_TARGET=false`, no
/// `AMLX_DEBUG_PORT` (one inherited from a debugged ancestor names that process's port;
/// one set by a target path that failed later is dropped too).
fn mark_undebugged(step: &mut Step, kind: StepKind) {
    step.env
        .retain(|(key, _)| key != "AMLX_DEBUG_PORT" && key != lineage::STEP_KIND_VAR);
    step.env.push(env_pair("AMLX_DEBUG_TARGET", "false"));
    step.env
        .push(env_pair(lineage::STEP_KIND_VAR, kind.as_str()));
    step.env_remove.push("AMLX_DEBUG_PORT".into());
}

fn process_mode(args: &ExecArgs) -> ProcessMode {
    if args.supervise {
        ProcessMode::Supervise
    } else if args.replace {
        ProcessMode::Replace
    } else {
        process::default_mode()
    }
}

/// The role variables every step gets (`AMLX_AGENT_ACTIVE` guards shims against recursion).
fn role_env(detection: &Detection) -> Vec<(OsString, OsString)> {
    let role = &detection.role;
    let known = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_default();
    vec![
        env_pair("AMLX_AGENT_ACTIVE", "1"),
        env_pair("AMLX_RANK", &known(role.rank)),
        env_pair("AMLX_LOCAL_RANK", &known(role.local_rank)),
        env_pair("AMLX_WORLD_SIZE", &known(role.world_size)),
    ]
}

pub(super) fn env_pair(key: &str, value: &str) -> (OsString, OsString) {
    (key.into(), value.into())
}
