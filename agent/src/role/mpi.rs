//! MPI launchers: Open MPI, MVAPICH2, PMI (MPICH Hydra, Intel MPI, Cray PALS) and PMIx.
//!
//! Markers are the rank variables themselves, never a bare prefix: images often export
//! `OMPI_MCA_*` or `PMI_*` tuning variables outside any launch.

use super::values::Vars;
use super::{Detector, Found, Launcher, cluster};

/// Open MPI `mpirun` 4/5 (also Kubeflow MPIJob workers and Azure ML MPI jobs).
pub(super) struct OpenMpi;

impl Detector for OpenMpi {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.any_set(&["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"])
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        // OMPI_COMM_WORLD_NODE_RANK is this process's rank among the job's processes on
        // the node (a local rank counting spawned jobs), not a node index: never read it.
        Found {
            rank: vars.index("OMPI_COMM_WORLD_RANK"),
            local_rank: vars.index("OMPI_COMM_WORLD_LOCAL_RANK"),
            world_size: vars.count("OMPI_COMM_WORLD_SIZE"),
            local_world_size: vars.count("OMPI_COMM_WORLD_LOCAL_SIZE"),
            multi_process: true,
            ..Found::new(Launcher::OpenMpi)
        }
    }
}

/// MVAPICH2 (`mpirun_rsh`, its Hydra build).
pub(super) struct Mvapich2;

impl Detector for Mvapich2 {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.any_set(&["MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"])
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        Found {
            rank: vars.index("MV2_COMM_WORLD_RANK"),
            local_rank: vars.index("MV2_COMM_WORLD_LOCAL_RANK"),
            world_size: vars.count("MV2_COMM_WORLD_SIZE"),
            local_world_size: vars.count("MV2_COMM_WORLD_LOCAL_SIZE"),
            multi_process: true,
            ..Found::new(Launcher::Mvapich2)
        }
    }
}

/// PMI-1/2 process managers: MPICH Hydra `mpiexec` and Intel MPI (`MPI_LOCALRANKID`),
/// Cray PALS (`PMI_LOCAL_RANK`, `PALS_*`).
pub(super) struct Pmi;

impl Detector for Pmi {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        // Hydra in PMI_PORT mode sets PMI_ID instead of PMI_RANK/PMI_SIZE.
        vars.any_set(&["PMI_RANK", "PMI_SIZE", "PMI_ID"])
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        let cray = vars.any_set(&["PMI_LOCAL_RANK", "PALS_RANKID", "PALS_NODEID"]);
        // Hydra hands each process its global rank as PMI_ID when it uses PMI_PORT.
        let rank = vars.first_index(&["PMI_RANK", "PMI_ID"]);
        let world_size = vars.count("PMI_SIZE");
        if cray {
            Found {
                rank,
                world_size,
                local_rank: vars.first_index(&["PMI_LOCAL_RANK", "PALS_LOCAL_RANKID"]),
                local_world_size: vars.count("PMI_LOCAL_SIZE"),
                node_rank: vars.index("PALS_NODEID").map(|v| v.n),
                multi_process: true,
                ..Found::new(Launcher::CrayPals)
            }
        } else {
            Found {
                rank,
                world_size,
                local_rank: vars.index("MPI_LOCALRANKID"),
                local_world_size: vars.count("MPI_LOCALNRANKS"),
                multi_process: true,
                ..Found::new(Launcher::Mpich)
            }
        }
    }
}

/// Namespace prefix of Slurm's PMIx plugin (`srun --mpi=pmix`): `slurm.pmix.<job>.<step>`.
const SLURM_PMIX_NAMESPACE: &str = "slurm.pmix.";

/// A PMIx server: only the rank is in the environment.
pub(super) struct Pmix;

impl Detector for Pmix {
    fn applies(&self, vars: &Vars<'_>) -> bool {
        vars.is_set("PMIX_RANK")
    }

    fn read(&self, vars: &mut Vars<'_>) -> Found {
        let mut found = Found {
            rank: vars.index("PMIX_RANK"),
            multi_process: true,
            ..Found::new(Launcher::Pmix)
        };
        let under_srun = vars
            .text("PMIX_NAMESPACE")
            .is_some_and(|ns| ns.starts_with(SLURM_PMIX_NAMESPACE));
        // srun is the PMIx server here, so its task variables describe these same
        // processes: fill what PMIx leaves out, if srun agrees on the rank.
        if under_srun && let Some(step) = cluster::slurm_step(vars) {
            let agrees = match (found.rank, step.rank) {
                (Some(a), Some(b)) => a.n == b.n,
                _ => true,
            };
            if agrees {
                found.rank = found.rank.or(step.rank);
                found.local_rank = step.local_rank;
                found.world_size = step.world_size;
                found.local_world_size = step.local_world_size;
                found.node_rank = step.node_rank;
                found.node_master = step.node_master;
            }
        }
        found
    }
}
