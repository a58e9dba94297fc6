//! Run-mode table: one or more cases per launcher family.

use super::super::Launcher as L;
use super::{Case, Role, RoleExt as _, case};

const HYDRA: &[(&str, &str)] = &[
    ("PMI_RANK", "2"),
    ("PMI_SIZE", "4"),
    ("MPI_LOCALRANKID", "2"),
    ("MPI_LOCALNRANKS", "4"),
    ("PMI_FD", "9"),
];

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("nothing", &[], Role::unknown(L::None), &[]),
        case(
            "open mpi",
            &[
                ("OMPI_COMM_WORLD_RANK", "5"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "8"),
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "4"),
            ],
            Role::unknown(L::OpenMpi)
                .ranks(5, 1, 8)
                .local_world(4)
                .multi(),
            &[],
        ),
        case(
            "OMPI_MCA tuning variables are not a launch",
            &[("OMPI_MCA_btl_vader_single_copy_mechanism", "none")],
            Role::unknown(L::None),
            &[],
        ),
        case(
            "OMPI_COMM_WORLD_NODE_RANK is not a node index",
            &[
                ("OMPI_COMM_WORLD_RANK", "3"),
                ("OMPI_COMM_WORLD_SIZE", "4"),
                ("OMPI_COMM_WORLD_NODE_RANK", "3"),
            ],
            Role::unknown(L::OpenMpi).rank(3).world(4).multi(),
            &[],
        ),
        case(
            "mpich hydra",
            HYDRA,
            Role::unknown(L::Mpich)
                .ranks(2, 2, 4)
                .local_world(4)
                .multi(),
            &[],
        ),
        case(
            "hydra PMI_PORT mode sets PMI_ID, not PMI_RANK",
            &[
                ("PMI_ID", "3"),
                ("PMI_PORT", "node1:4567"),
                ("MPI_LOCALRANKID", "1"),
            ],
            Role::unknown(L::Mpich).rank(3).local(1).multi(),
            &[],
        ),
        case(
            "cray pals",
            &[
                ("PMI_RANK", "9"),
                ("PMI_SIZE", "16"),
                ("PMI_LOCAL_RANK", "1"),
                ("PMI_LOCAL_SIZE", "8"),
                ("PALS_NODEID", "1"),
            ],
            Role::unknown(L::CrayPals)
                .ranks(9, 1, 16)
                .local_world(8)
                .node(1)
                .multi(),
            &[],
        ),
        case(
            "mvapich2",
            &[
                ("MV2_COMM_WORLD_RANK", "1"),
                ("MV2_COMM_WORLD_LOCAL_RANK", "1"),
                ("MV2_COMM_WORLD_SIZE", "2"),
            ],
            Role::unknown(L::Mvapich2).ranks(1, 1, 2).multi(),
            &[],
        ),
        case(
            "pmix alone gives only the rank",
            &[
                ("PMIX_RANK", "6"),
                ("PMIX_NAMESPACE", "prterun-host-1234@1"),
            ],
            Role::unknown(L::Pmix).rank(6).multi(),
            &[],
        ),
        case(
            "pmix under srun fills the gaps from slurm",
            &[
                ("PMIX_RANK", "3"),
                ("PMIX_NAMESPACE", "slurm.pmix.77.0"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "3"),
                ("SLURM_LOCALID", "1"),
                ("SLURM_STEP_NUM_TASKS", "4"),
                ("SLURM_NODEID", "1"),
            ],
            Role::unknown(L::Pmix).ranks(3, 1, 4).node(1).multi(),
            &[],
        ),
        case(
            "pmix under srun but srun disagrees on the rank: no filling",
            &[
                ("PMIX_RANK", "3"),
                ("PMIX_NAMESPACE", "slurm.pmix.77.0"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "1"),
            ],
            Role::unknown(L::Pmix).rank(3).multi(),
            &[],
        ),
        case(
            "slurm srun step, master by node list",
            &[
                ("SLURM_JOB_ID", "77"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "4"),
                ("SLURM_LOCALID", "0"),
                ("SLURM_NTASKS", "8"),
                ("SLURM_NODEID", "1"),
                ("SLURM_STEP_NODELIST", "node[02-05]"),
            ],
            Role::unknown(L::Slurm)
                .ranks(4, 0, 8)
                .node(1)
                .master(true)
                .multi(),
            &[],
        ),
        case(
            "slurm node list names another first host",
            &[
                ("SLURM_STEP_ID", "3"),
                ("SLURM_PROCID", "1"),
                ("SLURM_NODEID", "0"),
                ("SLURM_STEP_NODELIST", "node[01-02]"),
                ("SLURMD_NODENAME", "node02"),
            ],
            Role::unknown(L::Slurm)
                .rank(1)
                .node(0)
                .master(false)
                .multi(),
            &[],
        ),
        case(
            "sbatch but not srun: no multi-process claim",
            &[
                ("SLURM_JOB_ID", "77"),
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "1"),
                ("SLURM_NODEID", "0"),
            ],
            Role::unknown(L::Slurm),
            &[],
        ),
        case(
            "slurm batch pseudo step",
            &[("SLURM_STEP_ID", "4294967291"), ("SLURM_PROCID", "0")],
            Role::unknown(L::Slurm),
            &[],
        ),
        case(
            "torchrun",
            &[
                ("TORCHELASTIC_RUN_ID", "abc"),
                ("RANK", "5"),
                ("LOCAL_RANK", "1"),
                ("WORLD_SIZE", "8"),
                ("LOCAL_WORLD_SIZE", "4"),
                ("GROUP_RANK", "1"),
            ],
            Role::unknown(L::Torchrun)
                .ranks(5, 1, 8)
                .local_world(4)
                .node(1)
                .multi(),
            &[],
        ),
        case(
            "torchrun marked by GROUP_RANK only, node master",
            &[
                ("GROUP_RANK", "0"),
                ("RANK", "0"),
                ("LOCAL_RANK", "0"),
                ("WORLD_SIZE", "2"),
            ],
            Role::unknown(L::Torchrun).ranks(0, 0, 2).node(0).multi(),
            &[],
        ),
        case(
            "horovod",
            &[
                ("HOROVOD_RANK", "3"),
                ("HOROVOD_LOCAL_RANK", "1"),
                ("HOROVOD_SIZE", "4"),
                ("HOROVOD_LOCAL_SIZE", "2"),
                ("HOROVOD_CROSS_RANK", "1"),
            ],
            Role::unknown(L::Horovod)
                .ranks(3, 1, 4)
                .local_world(2)
                .node(1)
                .multi(),
            &[],
        ),
        case(
            "deepspeed",
            &[
                ("RANK", "2"),
                ("LOCAL_RANK", "0"),
                ("WORLD_SIZE", "4"),
                ("LOCAL_SIZE", "2"),
                ("CROSS_RANK", "1"),
                ("MASTER_ADDR", "10.0.0.4"),
            ],
            Role::unknown(L::DeepSpeed)
                .ranks(2, 0, 4)
                .local_world(2)
                .node(1)
                .multi(),
            &[],
        ),
        case(
            "azure ml pytorch distribution",
            &[
                ("RANK", "0"),
                ("LOCAL_RANK", "0"),
                ("WORLD_SIZE", "4"),
                ("NODE_RANK", "0"),
                ("MASTER_ADDR", "10.0.0.4"),
            ],
            Role::unknown(L::Rank).ranks(0, 0, 4).node(0).multi(),
            &[],
        ),
        case(
            "bare RANK outside kubernetes is a process rank",
            &[("RANK", "1"), ("WORLD_SIZE", "2")],
            Role::unknown(L::Rank).rank(1).world(2).multi(),
            &[],
        ),
        case(
            "kubeflow pytorchjob pod: RANK is the node index",
            &[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("RANK", "2"),
                ("WORLD_SIZE", "3"),
                ("MASTER_ADDR", "job-master-0"),
            ],
            Role::unknown(L::KubeflowPytorch).node(2).multi(),
            &[],
        ),
        case(
            "kubeflow pytorchjob pod with PET_NODE_RANK",
            &[("PET_NODE_RANK", "0"), ("PET_NNODES", "2"), ("RANK", "0")],
            Role::unknown(L::KubeflowPytorch).node(0).multi(),
            &[],
        ),
        case(
            "kubeflow mpijob worker pod entrypoint",
            &[("K_MPI_JOB_ROLE", "worker")],
            Role::unknown(L::KubeflowMpi).multi(),
            &[],
        ),
        case(
            "kubeflow mpijob rank: open mpi wins",
            &[
                ("K_MPI_JOB_ROLE", "worker"),
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "2"),
            ],
            Role::unknown(L::OpenMpi).rank(1).world(2).multi(),
            &[],
        ),
        case(
            "azure batch master node",
            &[
                ("AZ_BATCH_IS_CURRENT_NODE_MASTER", "true"),
                ("AZ_BATCH_MASTER_NODE", "10.0.0.4:6000"),
            ],
            Role::unknown(L::AzureBatch).master(true).multi(),
            &[],
        ),
        case(
            "azure batch master flag is compared case-insensitively",
            &[("AZ_BATCH_IS_CURRENT_NODE_MASTER", "True")],
            Role::unknown(L::AzureBatch).master(true).multi(),
            &[],
        ),
        case(
            "trap: AZ_BATCH_IS_CURRENT_NODE_MASTER=false is false",
            &[
                ("AZ_BATCH_IS_CURRENT_NODE_MASTER", "false"),
                ("AZ_BATCH_MASTER_NODE", "10.0.0.5:6000"),
            ],
            Role::unknown(L::AzureBatch).master(false).multi(),
            &[],
        ),
        case(
            "azure batch master by address, this node",
            &[
                ("AZ_BATCH_MASTER_NODE", "10.0.0.5:6000"),
                ("AZ_BATCH_HOST_LIST", "10.0.0.5,10.0.0.6"),
            ],
            Role::unknown(L::AzureBatch).master(true).multi(),
            &[],
        ),
        case(
            "azure batch master by address, another node",
            &[("AZ_BATCH_MASTER_NODE", "10.0.0.4:6000")],
            Role::unknown(L::AzureBatch).master(false).multi(),
            &[],
        ),
        case(
            "azure ml mpi: ranks from open mpi, master from AZ_BATCHAI_MPI_MASTER_NODE",
            &[
                ("OMPI_COMM_WORLD_RANK", "0"),
                ("OMPI_COMM_WORLD_SIZE", "2"),
                ("AZ_BATCHAI_MPI_MASTER_NODE", "node02"),
            ],
            Role::unknown(L::OpenMpi)
                .rank(0)
                .world(2)
                .master(true)
                .multi(),
            &[],
        ),
        case(
            "azure ml mpi master elsewhere, by address",
            &[
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "2"),
                ("AZ_BATCHAI_MPI_MASTER_NODE", "10.0.0.4"),
            ],
            Role::unknown(L::OpenMpi)
                .rank(1)
                .world(2)
                .master(false)
                .multi(),
            &[],
        ),
        case(
            "deepspeed in a kubernetes pod keeps process ranks (LOCAL_RANK set)",
            &[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("RANK", "3"),
                ("LOCAL_RANK", "1"),
                ("WORLD_SIZE", "4"),
                ("CROSS_RANK", "1"),
            ],
            Role::unknown(L::DeepSpeed).ranks(3, 1, 4).node(1).multi(),
            &[],
        ),
    ]
}
