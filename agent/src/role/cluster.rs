//! Schedulers below the process launchers: Slurm, and node-level Azure Batch / Azure ML.

use std::net::{IpAddr, SocketAddr};

use super::values::{Vars, same_host};
use super::{Detector, Found, Launcher};

/// Step ids from here up are Slurm's pseudo steps (batch script, extern, interactive,
/// pending), not `srun` steps.
const SLURM_FIRST_SPECIAL_STEP_ID: u32 = 0xFFFF_FFF0;

/// Slurm: an `srun` step, or an allocation (`sbatch` script, `salloc` shell) outside one.
pub(super) struct Slurm;

impl Detector for Slurm {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.any_set(&[
            "SLURM_PROCID",
            "SLURM_STEP_ID",
            "SLURM_JOB_ID",
            "SLURM_JOBID",
        ])
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        // Inside an sbatch script but outside srun, SLURM_PROCID=0 and SLURM_NTASKS=1
        // describe the batch step, whatever the script starts: claim nothing about ranks.
        slurm_step(vars).unwrap_or_else(|| Found::new(Launcher::Slurm))
    }
}

/// The task variables of an `srun` step, `None` outside one.
pub(super) fn slurm_step(vars: &mut Vars<'_>) -> Option<Found> {
    let step = vars.first_index(&["SLURM_STEP_ID", "SLURM_STEPID"])?;
    if step.n >= SLURM_FIRST_SPECIAL_STEP_ID {
        return None;
    }
    let node_rank = vars.index("SLURM_NODEID").map(|v| v.n);
    Some(Found {
        rank: vars.index("SLURM_PROCID"),
        local_rank: vars.index("SLURM_LOCALID"),
        world_size: vars.first_count(&["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"]),
        node_rank,
        node_master: slurm_master(vars),
        multi_process: true,
        ..Found::new(Launcher::Slurm)
    })
}

/// Whether this node is the first host of `SLURM_STEP_NODELIST`.
fn slurm_master(vars: &mut Vars<'_>) -> Option<bool> {
    let list = vars.text("SLURM_STEP_NODELIST")?;
    let Some(first) = first_host(&list) else {
        vars.reject("SLURM_STEP_NODELIST", &list, "not a Slurm host list");
        return None;
    };
    let me = if vars.has_value("SLURMD_NODENAME") {
        vars.text("SLURMD_NODENAME")
    } else {
        vars.host().hostname()
    }?;
    Some(same_host(&first, &me))
}

/// The first host of a Slurm host list: `node[01-04,07],gpu3` gives `node01`.
pub(super) fn first_host(list: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let mut rest = list[..end].trim();
    let mut host = String::new();
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = open + rest[open..].find(']')?;
        let first = rest[open + 1..close].split([',', '-']).next()?.trim();
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    host.push_str(rest);
    let valid = !host.is_empty() && !host.contains([']', ' ']);
    valid.then_some(host)
}

/// `true`/`false` on every node of an Azure Batch multi-instance task.
const BATCH_MASTER_FLAG: &str = "AZ_BATCH_IS_CURRENT_NODE_MASTER";
/// `ip:port` of the master node; the port belongs to Batch and is never reused.
const BATCH_MASTER_NODE: &str = "AZ_BATCH_MASTER_NODE";
/// The master node's address in Azure ML (Batch AI) MPI jobs.
const BATCHAI_MPI_MASTER_NODE: &str = "AZ_BATCHAI_MPI_MASTER_NODE";

/// Only node-level Azure Batch / Azure ML variables: ParallelRunStep workers and the like
/// have no ranks, and every worker on the master node sees the master flag.
pub(super) struct AzureBatch;

impl Detector for AzureBatch {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.any_set(&[
            BATCH_MASTER_FLAG,
            BATCH_MASTER_NODE,
            BATCHAI_MPI_MASTER_NODE,
            "AZ_BATCH_HOST_LIST",
            "AZ_BATCH_NODE_LIST",
        ])
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        Found {
            node_master: azure_node_master(vars),
            multi_process: true,
            ..Found::new(Launcher::AzureBatch)
        }
    }
}

/// Whether this is the master node per Azure Batch / Azure ML: the master flag (parsed,
/// not tested for presence: workers have `"false"`), else the master node's address.
pub(super) fn azure_node_master(vars: &mut Vars<'_>) -> Option<bool> {
    if let Some(master) = vars.flag(BATCH_MASTER_FLAG) {
        return Some(master);
    }
    if let Some(node) = vars.text(BATCH_MASTER_NODE) {
        let host = match node.parse::<SocketAddr>() {
            Ok(addr) => addr.ip().to_string(),
            Err(_) => node
                .rsplit_once(':')
                .map_or(node.as_str(), |(h, _)| h)
                .to_owned(),
        };
        if let Some(master) = is_this_node(vars, &host) {
            return Some(master);
        }
    }
    let node = vars.text(BATCHAI_MPI_MASTER_NODE)?;
    is_this_node(vars, &node)
}

/// Whether `host` (an address or a host name) is this node; `None` when we cannot tell.
fn is_this_node(vars: &Vars<'_>, host: &str) -> Option<bool> {
    match host.parse::<IpAddr>() {
        Ok(addr) => Some(vars.host().has_addr(addr)),
        Err(_) => vars.host().hostname().map(|me| same_host(host, &me)),
    }
}

#[cfg(test)]
mod tests {
    use super::first_host;

    #[test]
    fn slurm_host_lists() {
        let cases: &[(&str, Option<&str>)] = &[
            ("node01", Some("node01")),
            ("node01,node02", Some("node01")),
            ("node[01-04]", Some("node01")),
            ("node[07,01-03],gpu1", Some("node07")),
            ("nid[001-004]-ib", Some("nid001-ib")),
            ("rack[1-2]-n[3-4]", Some("rack1-n3")),
            ("gpu3,node[1-2]", Some("gpu3")),
            ("", None),
            ("node[", None),
            ("node]01[", None),
            ("node[a-b]", None),
        ];
        for (list, want) in cases {
            assert_eq!(first_host(list).as_deref(), *want, "first_host({list:?})");
        }
    }
}
