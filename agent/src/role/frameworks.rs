//! ML framework launchers: torchrun, Horovod, bare `RANK` (DeepSpeed, Azure ML PyTorch,
//! Kubeflow PyTorchJob pods) and Kubeflow MPIJob pods.

use super::values::{Value, Vars};
use super::{Detector, Found, Launcher};

/// torchrun / `torch.distributed.run` (elastic agent).
pub(super) struct Torchrun;

impl Detector for Torchrun {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.any_set(&["TORCHELASTIC_RUN_ID", "GROUP_RANK"])
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        // Elastic restarts (TORCHELASTIC_RESTART_COUNT) may reassign ranks: the values
        // read here are the current incarnation's.
        Found {
            rank: vars.index("RANK"),
            local_rank: vars.index("LOCAL_RANK"),
            world_size: vars.count("WORLD_SIZE"),
            local_world_size: vars.count("LOCAL_WORLD_SIZE"),
            node_rank: vars.index("GROUP_RANK").map(|v| v.n),
            multi_process: true,
            ..Found::new(Launcher::Torchrun)
        }
    }
}

/// Horovod's gloo launcher (`horovodrun`).
pub(super) struct Horovod;

impl Detector for Horovod {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.any_set(&["HOROVOD_RANK", "HOROVOD_SIZE"])
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        Found {
            rank: vars.index("HOROVOD_RANK"),
            local_rank: vars.index("HOROVOD_LOCAL_RANK"),
            world_size: vars.count("HOROVOD_SIZE"),
            local_world_size: vars.count("HOROVOD_LOCAL_SIZE"),
            // The cross rank is the index among processes with the same local rank: the node.
            node_rank: vars.index("HOROVOD_CROSS_RANK").map(|v| v.n),
            multi_process: true,
            ..Found::new(Launcher::Horovod)
        }
    }
}

/// Variables that say the process runs in a Kubernetes pod.
const KUBERNETES_MARKERS: &[&str] = &["KUBERNETES_SERVICE_HOST", "PET_NODE_RANK", "PET_NNODES"];

/// Bare `RANK`/`LOCAL_RANK`/`WORLD_SIZE` without torchrun's markers.
pub(super) struct BareRank;

impl Detector for BareRank {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.any_set(&["RANK", "LOCAL_RANK", "PET_NODE_RANK"])
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        if vars.any_set(KUBERNETES_MARKERS) && !vars.is_set("LOCAL_RANK") {
            return kubeflow_pod(vars);
        }
        let launcher = if vars.any_set(&["CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE"]) {
            Launcher::DeepSpeed
        } else {
            Launcher::Rank
        };
        Found {
            rank: vars.index("RANK"),
            local_rank: vars.index("LOCAL_RANK"),
            world_size: vars.count("WORLD_SIZE"),
            local_world_size: vars.first_count(&["LOCAL_WORLD_SIZE", "LOCAL_SIZE"]),
            // Azure ML PyTorch sets NODE_RANK, DeepSpeed CROSS_RANK.
            node_rank: vars.first_index(&["NODE_RANK", "CROSS_RANK"]).map(|v| v.n),
            multi_process: true,
            ..Found::new(launcher)
        }
    }
}

/// A Kubeflow PyTorchJob pod's own environment: `RANK` is the pod index (a node), and
/// `WORLD_SIZE` the number of pods, so no process rank is known; whatever runs in the pod
/// (torchrun, several workers) shares it.
fn kubeflow_pod(vars: &mut Vars<'_>) -> Found {
    let node = vars.first_index(&["PET_NODE_RANK", "RANK"]);
    // PET_NNODES may be an elastic range like "1:4": then unknown, with a warning.
    let nodes = vars.first_count(&["PET_NNODES", "WORLD_SIZE"]);
    let node_rank = match (node, nodes) {
        (Some(Value { n, from }), Some(count)) if n >= count.n => {
            vars.warn(
                from,
                format!(
                    "ignoring {from}=\"{n}\": not below {}={}; treating the node rank as unknown",
                    count.from, count.n
                ),
            );
            None
        }
        (node, _) => node.map(|v| v.n),
    };
    Found {
        node_rank,
        multi_process: true,
        ..Found::new(Launcher::KubeflowPytorch)
    }
}

/// Values of `K_MPI_JOB_ROLE`.
const KUBEFLOW_MPI_ROLES: &[&str] = &["launcher", "worker"];

/// A Kubeflow MPIJob pod process that mpirun did not start (no `OMPI_*`): the launcher
/// pod's command or a worker pod's sshd. Ranks arrive later, spawned over ssh.
pub(super) struct KubeflowMpi;

impl Detector for KubeflowMpi {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.is_set("K_MPI_JOB_ROLE")
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        if let Some(role) = vars.text("K_MPI_JOB_ROLE")
            && !KUBEFLOW_MPI_ROLES.contains(&role.as_str())
        {
            vars.reject("K_MPI_JOB_ROLE", &role, "expected launcher or worker");
        }
        Found {
            multi_process: true,
            ..Found::new(Launcher::KubeflowMpi)
        }
    }
}
