//! What `run` prints before the step starts: `.vscode/launch.json` written with one
//! `listen` configuration per debugged rank (and a compound), then how to attach, where
//! the relay is and what runs where.

use std::ffi::OsString;
use std::io::Write as _;

use anyhow::Context as _;

use super::target::Target;
use super::{Plan, Relay};
use crate::launch_json::{self, DebugTarget, LaunchSpec};
use crate::session::DebugMode;

/// Writes `.vscode/launch.json` in the project and prints how to attach.
pub(super) fn instructions(
    plan: &Plan<'_>,
    target: &dyn Target,
    relay: &Relay,
) -> anyhow::Result<()> {
    let options = plan.options;
    let root = options.project.display().to_string();
    let spec = LaunchSpec {
        mode: DebugMode::Connect,
        host: "127.0.0.1".to_owned(),
        targets: plan
            .routes
            .iter()
            .map(|route| DebugTarget {
                rank: Some(route.rank),
                port: route.vscode_port,
            })
            .collect(),
        local_root: root,
        remote_root: target.remote_root(),
        post_mortem_port: plan.post_mortem.map(|p| p.vscode_port),
    };
    let launch_json = options.project.join(".vscode").join("launch.json");
    launch_json::write(&launch_json, &spec)?;
    let configurations = launch_json::configurations(&spec);
    let start = match spec.targets.as_slice() {
        [only] => only.name(),
        _ => launch_json::COMPOUND_NAME.to_owned(),
    };
    // The rank configurations only: the post-mortem one is not in the compound.
    let several = configurations.len() > 1;
    let label = options.label;
    let processes = plan.launch.describe(options.ranks_count);
    let debugged = rank_list(plan.ranks);
    let mut text = String::new();
    text.push_str(&format!(
        "{label}: {} on {}\n",
        command_line(&options.command),
        target.describe()
    ));
    text.push_str(&format!("  relay     {}\n", relay.describe()));
    for route in plan.routes {
        text.push_str(&format!(
            "  listener  hands rank {}'s debug connection to VS Code on 127.0.0.1:{}\n",
            route.rank, route.vscode_port
        ));
    }
    if let Some(post_mortem) = plan.post_mortem {
        text.push_str(&format!(
            "  listener  hands a crashed rank's post-mortem session to VS Code on 127.0.0.1:{}\n",
            post_mortem.vscode_port
        ));
    }
    let verb = if plan.ranks.len() == 1 { "is" } else { "are" };
    text.push_str(&format!(
        "  step      {processes}; {debugged} {verb} the debug target{}\n\n",
        if plan.ranks.len() == 1 { "" } else { "s" }
    ));
    text.push_str("To attach from VS Code:\n");
    text.push_str(&format!(
        "  1. Open the folder in VS Code: code {}\n     \
         Its .vscode/launch.json holds {} (or paste {} into yours):\n",
        crate::process::shell_word(&options.project.to_string_lossy()),
        if several {
            "these configurations and a compound starting the ranks' ones"
        } else {
            "this configuration"
        },
        if several { "them" } else { "it" },
    ));
    for line in configurations.iter().flat_map(|c| c.lines()) {
        text.push_str(&format!("     {line}\n"));
    }
    let mut step = 2;
    if let Some(hint) = &options.hint {
        text.push_str(&format!("  {step}. {hint}\n"));
        step += 1;
    }
    text.push_str(&format!(
        "  {step}. Start \"{start}\" in VS Code (Run and Debug): the step waits up to {} for it.\n",
        humantime::format_duration(options.attach_timeout)
    ));
    if plan.post_mortem.is_some() {
        text.push_str(&format!(
            "  {}. When a rank crashes (every other rank is hooked), start \"{}\": the crashed \
             rank waits up to {} for it, stopped where it raised.\n",
            step + 1,
            launch_json::POST_MORTEM_NAME,
            humantime::format_duration(options.attach_timeout)
        ));
    }
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("could not print the instructions")
}

/// `rank 0`, `ranks 0, 2, 3`.
pub(super) fn rank_list(ranks: &[u32]) -> String {
    let list: Vec<String> = ranks.iter().map(u32::to_string).collect();
    match list.as_slice() {
        [one] => format!("rank {one}"),
        _ => format!("ranks {}", list.join(", ")),
    }
}

/// The user's command for messages (lossy: only printed).
pub(super) fn command_line(command: &[OsString]) -> String {
    command
        .iter()
        .map(|word| word.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
