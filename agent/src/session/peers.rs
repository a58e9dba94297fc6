//! The other ranks of a held process: while a breakpoint or a post-mortem session holds
//! one rank, its peers run into their framework's collective timeouts. Which timeout
//! ends the job, and how to raise it, read from the environment the launcher set.

use crate::role::Env;

/// Variables that say torch.distributed (or NCCL under it) runs here.
const TORCH_MARKERS: &[&str] = &[
    "TORCHELASTIC_RUN_ID",
    "MASTER_ADDR",
    "GROUP_RANK",
    "NCCL_DEBUG",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_DISABLE",
    "NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_BLOCKING_WAIT",
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC",
];

/// One line for the log (once per session), or `None` for a process without peers
/// (`world_size`: the job's, when known).
///
/// ```
/// use amlx_agent::session::peers::timeout_advice;
/// let env: std::collections::HashMap<String, String> = [("HOROVOD_RANK".into(), "1".into())].into();
/// assert!(timeout_advice(&env, Some(4)).unwrap().contains("HOROVOD_GLOO_TIMEOUT_SECONDS"));
/// ```
pub fn timeout_advice(env: &dyn Env, world_size: Option<u32>) -> Option<String> {
    let set = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
    let shown = |name: &str, default: &str| match set(name) {
        Some(value) => format!("{name}={value}"),
        None => format!("{name} unset, {default}"),
    };
    let torch = TORCH_MARKERS.iter().any(|name| set(name).is_some());
    if set("HOROVOD_RANK").is_some() || set("HOROVOD_SIZE").is_some() {
        return Some(format!(
            "while this rank is held, Horovod's other ranks stop in their next collective: \
             the gloo controller gives up after HOROVOD_GLOO_TIMEOUT_SECONDS ({}) and the \
             stall check ends the job after HOROVOD_STALL_SHUTDOWN_TIME_SECONDS ({}); raise \
             them in the job's environment for debugging sessions",
            shown("HOROVOD_GLOO_TIMEOUT_SECONDS", "30 s"),
            shown("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "off"),
        ));
    }
    if torch {
        return Some(format!(
            "while this rank is held, the other ranks wait in their next torch.distributed \
             collective until the process group's timeout (init_process_group(timeout=...), \
             10 min by default with NCCL, 30 min with gloo) or NCCL's watchdog ({}) ends the \
             job; pass e.g. timeout=datetime.timedelta(hours=2) and raise \
             TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC for debugging sessions",
            shown("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", "480 s"),
        ));
    }
    if world_size.is_some_and(|n| n > 1) {
        return Some(
            "while a debugger holds this rank, the other ranks run on into their collective \
             timeouts (NCCL, gloo, Horovod, MPI): raise those timeouts for debugging sessions"
                .to_owned(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_framework_names_its_own_timeout() {
        /// (variables, world size, a piece of the advice or none)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<u32>, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (
                &[("HOROVOD_RANK", "0")],
                Some(2),
                Some("HOROVOD_GLOO_TIMEOUT_SECONDS unset, 30 s"),
            ),
            (
                &[
                    ("HOROVOD_SIZE", "2"),
                    ("HOROVOD_GLOO_TIMEOUT_SECONDS", "600"),
                ],
                None,
                Some("HOROVOD_GLOO_TIMEOUT_SECONDS=600"),
            ),
            (
                &[("TORCHELASTIC_RUN_ID", "x")],
                Some(8),
                Some("init_process_group(timeout="),
            ),
            (
                &[("NCCL_DEBUG", "INFO")],
                Some(8),
                Some("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC unset"),
            ),
            (
                &[
                    ("MASTER_ADDR", "10.0.0.1"),
                    ("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", "7200"),
                ],
                Some(2),
                Some("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=7200"),
            ),
            (
                &[("PMI_RANK", "1")],
                Some(4),
                Some("NCCL, gloo, Horovod, MPI"),
            ),
            (&[("MASTER_ADDR", " ")], Some(1), None),
            (&[], None, None),
        ];
        for (vars, world_size, want) in cases {
            let env: std::collections::HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let advice = timeout_advice(&env, *world_size);
            match want {
                Some(want) => assert!(
                    advice.as_deref().is_some_and(|a| a.contains(want)),
                    "{env:?}: {advice:?}"
                ),
                None => assert_eq!(advice, None, "{env:?}"),
            }
        }
    }
}
