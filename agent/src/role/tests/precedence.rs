//! Run-mode table: which launcher wins, overrides, and the traps seen in real jobs.

use super::super::{Launcher as L, Overrides};
use super::{Case, Role, RoleExt as _, case};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case(
            "torchrun inside slurm: torchrun wins",
            &[
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "2"),
                ("TORCHELASTIC_RUN_ID", "x"),
                ("RANK", "3"),
                ("LOCAL_RANK", "3"),
                ("WORLD_SIZE", "8"),
            ],
            Role::unknown(L::Torchrun).ranks(3, 3, 8).multi(),
            &[],
        ),
        case(
            "mpi inside slurm: mpi wins",
            &[
                ("SLURM_JOB_ID", "77"),
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "1"),
                ("PMI_RANK", "2"),
                ("PMI_SIZE", "4"),
            ],
            Role::unknown(L::Mpich).rank(2).world(4).multi(),
            &[],
        ),
        case(
            "torchrun under mpi: torchrun wins",
            &[
                ("OMPI_COMM_WORLD_RANK", "0"),
                ("OMPI_COMM_WORLD_SIZE", "1"),
                ("GROUP_RANK", "0"),
                ("RANK", "1"),
                ("WORLD_SIZE", "2"),
            ],
            Role::unknown(L::Torchrun).rank(1).world(2).node(0).multi(),
            &[],
        ),
        case(
            "open mpi over mvapich2 over pmi over pmix",
            &[
                ("PMIX_RANK", "9"),
                ("PMI_RANK", "8"),
                ("MV2_COMM_WORLD_RANK", "7"),
                ("OMPI_COMM_WORLD_RANK", "6"),
            ],
            Role::unknown(L::OpenMpi).rank(6).multi(),
            &[],
        ),
        case(
            "mvapich2 over pmi",
            &[("PMI_RANK", "8"), ("MV2_COMM_WORLD_RANK", "7")],
            Role::unknown(L::Mvapich2).rank(7).multi(),
            &[],
        ),
        case(
            "pmi over pmix",
            &[("PMIX_RANK", "9"), ("PMI_RANK", "8")],
            Role::unknown(L::Mpich).rank(8).multi(),
            &[],
        ),
        case(
            "mpi over horovod over bare RANK",
            &[("RANK", "5"), ("HOROVOD_RANK", "4"), ("PMIX_RANK", "3")],
            Role::unknown(L::Pmix).rank(3).multi(),
            &[],
        ),
        case(
            "horovod over bare RANK",
            &[("RANK", "5"), ("HOROVOD_RANK", "4")],
            Role::unknown(L::Horovod).rank(4).multi(),
            &[],
        ),
        case(
            "bare RANK over slurm over azure batch",
            &[
                ("AZ_BATCH_IS_CURRENT_NODE_MASTER", "false"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "0"),
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
            ],
            Role::unknown(L::Rank)
                .rank(1)
                .local(1)
                .master(false)
                .multi(),
            &[],
        ),
        case(
            "slurm over azure batch",
            &[
                ("AZ_BATCH_IS_CURRENT_NODE_MASTER", "true"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "1"),
                ("SLURM_NODEID", "1"),
            ],
            Role::unknown(L::Slurm).rank(1).node(1).master(true).multi(),
            &[],
        ),
        Case {
            name: "flags override every variable",
            env: &[
                ("AMLX_RANK", "6"),
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "8"),
            ],
            overrides: Overrides {
                rank: Some(7),
                local_rank: Some(3),
                world_size: None,
            },
            want: Role::unknown(L::Override).ranks(7, 3, 8).multi(),
            warnings: &[],
        },
        case(
            "AMLX_RANK overrides the launcher",
            &[
                ("AMLX_RANK", "6"),
                ("AMLX_WORLD_SIZE", "10"),
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "8"),
            ],
            Role::unknown(L::Override).rank(6).world(10).multi(),
            &[],
        ),
        case(
            "empty AMLX_* (exported as unknown by exec) are unset, silently",
            &[
                ("AMLX_RANK", ""),
                ("AMLX_LOCAL_RANK", " "),
                ("PMI_RANK", "1"),
            ],
            Role::unknown(L::Mpich).rank(1).multi(),
            &[],
        ),
        case(
            "AMLX_* exported by an outer agent are not overrides",
            &[
                ("AMLX_AGENT_ACTIVE", "1"),
                ("AMLX_RANK", "0"),
                ("PMI_RANK", "3"),
                ("PMI_SIZE", "4"),
            ],
            Role::unknown(L::Mpich).rank(3).world(4).multi(),
            &[],
        ),
    ]
}

/// Bad values are unknown with exactly one warning each.
pub(super) fn traps() -> Vec<Case> {
    vec![
        case(
            "RANK=abc",
            &[("RANK", "abc"), ("WORLD_SIZE", "4")],
            Role::unknown(L::Rank).world(4).multi(),
            &[&["RANK", "\"abc\"", "not a whole number"]],
        ),
        case(
            "LOCAL_RANK=-1",
            &[
                ("TORCHELASTIC_RUN_ID", "x"),
                ("RANK", "0"),
                ("LOCAL_RANK", "-1"),
            ],
            Role::unknown(L::Torchrun).rank(0).multi(),
            &[&["LOCAL_RANK", "\"-1\"", "negative"]],
        ),
        case(
            "empty values",
            &[("OMPI_COMM_WORLD_RANK", ""), ("OMPI_COMM_WORLD_SIZE", "4")],
            Role::unknown(L::OpenMpi).world(4).multi(),
            &[&["OMPI_COMM_WORLD_RANK", "empty"]],
        ),
        case(
            "range value PET_NNODES=1:4",
            &[("PET_NODE_RANK", "1"), ("PET_NNODES", "1:4")],
            Role::unknown(L::KubeflowPytorch).node(1).multi(),
            &[&["PET_NNODES", "\"1:4\"", "range"]],
        ),
        case(
            "rank not below world size",
            &[
                ("PMI_RANK", "4"),
                ("PMI_SIZE", "4"),
                ("MPI_LOCALRANKID", "0"),
            ],
            Role::unknown(L::Mpich).local(0).world(4).multi(),
            &[&["PMI_RANK", "\"4\"", "PMI_SIZE=4"]],
        ),
        case(
            "local rank not below local size",
            &[
                ("HOROVOD_RANK", "1"),
                ("HOROVOD_LOCAL_RANK", "2"),
                ("HOROVOD_LOCAL_SIZE", "2"),
            ],
            Role::unknown(L::Horovod).rank(1).local_world(2).multi(),
            &[&["HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE=2"]],
        ),
        case(
            "zero world size",
            &[("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "0")],
            Role::unknown(L::Rank).rank(0).local(0).multi(),
            &[&["WORLD_SIZE", "zero"]],
        ),
        case(
            "bad master flag",
            &[("AZ_BATCH_IS_CURRENT_NODE_MASTER", "yes")],
            Role::unknown(L::AzureBatch).multi(),
            &[&[
                "AZ_BATCH_IS_CURRENT_NODE_MASTER",
                "\"yes\"",
                "true or false",
            ]],
        ),
        case(
            "bad AMLX_RANK falls back to the launcher",
            &[("AMLX_RANK", "first"), ("PMI_RANK", "1")],
            Role::unknown(L::Mpich).rank(1).multi(),
            &[&["AMLX_RANK", "\"first\""]],
        ),
        case(
            "kubeflow node rank not below node count",
            &[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("RANK", "3"),
                ("WORLD_SIZE", "3"),
            ],
            Role::unknown(L::KubeflowPytorch).multi(),
            &[&["RANK", "WORLD_SIZE=3", "node rank"]],
        ),
        case(
            "bad slurm node list",
            &[
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "0"),
                ("SLURM_STEP_NODELIST", "node["),
            ],
            Role::unknown(L::Slurm).rank(0).multi(),
            &[&["SLURM_STEP_NODELIST", "host list"]],
        ),
        case(
            "several bad values: one warning each",
            &[
                ("TORCHELASTIC_RUN_ID", "x"),
                ("RANK", "$(hostname)"),
                ("LOCAL_RANK", ""),
                ("WORLD_SIZE", "-3"),
            ],
            Role::unknown(L::Torchrun).multi(),
            &[&["RANK="], &["LOCAL_RANK="], &["WORLD_SIZE="]],
        ),
        case(
            "bad kubeflow mpi role",
            &[("K_MPI_JOB_ROLE", "boss")],
            Role::unknown(L::KubeflowMpi).multi(),
            &[&["K_MPI_JOB_ROLE", "\"boss\""]],
        ),
    ]
}
