//! The run-mode table: every launcher family, the precedence rules and the traps.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use super::*;

/// A node called `node02` with address 10.0.0.5.
struct FakeHost;

const FAKE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));

impl Host for FakeHost {
    fn hostname(&self) -> Option<String> {
        Some("node02.cluster.local".into())
    }
    fn has_addr(&self, addr: IpAddr) -> bool {
        addr == FAKE_IP
    }
}

/// The expected role, built up from an all-unknown one.
fn role(launcher: Launcher) -> Role {
    Role {
        launcher,
        rank: None,
        local_rank: None,
        world_size: None,
        local_world_size: None,
        node_rank: None,
        node_master: None,
        multi_process: false,
    }
}

trait RoleExt {
    fn ranks(self, rank: u32, local: u32, world: u32) -> Role;
    fn rank(self, rank: u32) -> Role;
    fn local(self, local: u32) -> Role;
    fn world(self, world: u32) -> Role;
    fn local_world(self, n: u32) -> Role;
    fn node(self, node_rank: u32) -> Role;
    fn master(self, master: bool) -> Role;
    fn multi(self) -> Role;
}

impl RoleExt for Role {
    fn ranks(self, rank: u32, local: u32, world: u32) -> Role {
        self.rank(rank).local(local).world(world)
    }
    fn rank(mut self, rank: u32) -> Role {
        self.rank = Some(rank);
        self
    }
    fn local(mut self, local: u32) -> Role {
        self.local_rank = Some(local);
        self
    }
    fn world(mut self, world: u32) -> Role {
        self.world_size = Some(world);
        self
    }
    fn local_world(mut self, n: u32) -> Role {
        self.local_world_size = Some(n);
        self
    }
    /// Node rank; the master node follows (rank 0) unless set afterwards.
    fn node(mut self, node_rank: u32) -> Role {
        self.node_rank = Some(node_rank);
        self.node_master = Some(node_rank == 0);
        self
    }
    fn master(mut self, master: bool) -> Role {
        self.node_master = Some(master);
        self
    }
    fn multi(mut self) -> Role {
        self.multi_process = true;
        self
    }
}

struct Case {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
    overrides: Overrides,
    want: Role,
    /// One warning per entry, each containing every listed fragment.
    warnings: &'static [&'static [&'static str]],
}

fn case(
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
    want: Role,
    warnings: &'static [&'static [&'static str]],
) -> Case {
    Case {
        name,
        env,
        overrides: Overrides::default(),
        want,
        warnings,
    }
}

use Launcher as L;

const HYDRA: &[(&str, &str)] = &[
    ("PMI_RANK", "2"),
    ("PMI_SIZE", "4"),
    ("MPI_LOCALRANKID", "2"),
    ("MPI_LOCALNRANKS", "4"),
    ("PMI_FD", "9"),
];

fn cases() -> Vec<Case> {
    vec![
        // --- every launcher family ---
        case("nothing", &[], role(L::None), &[]),
        case(
            "open mpi",
            &[
                ("OMPI_COMM_WORLD_RANK", "5"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "8"),
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "4"),
            ],
            role(L::OpenMpi).ranks(5, 1, 8).local_world(4).multi(),
            &[],
        ),
        case(
            "OMPI_MCA tuning variables are not a launch",
            &[("OMPI_MCA_btl_vader_single_copy_mechanism", "none")],
            role(L::None),
            &[],
        ),
        case(
            "OMPI_COMM_WORLD_NODE_RANK is not a node index",
            &[
                ("OMPI_COMM_WORLD_RANK", "3"),
                ("OMPI_COMM_WORLD_SIZE", "4"),
                ("OMPI_COMM_WORLD_NODE_RANK", "3"),
            ],
            role(L::OpenMpi).rank(3).world(4).multi(),
            &[],
        ),
        case(
            "mpich hydra",
            HYDRA,
            role(L::Mpich).ranks(2, 2, 4).local_world(4).multi(),
            &[],
        ),
        case(
            "hydra PMI_PORT mode sets PMI_ID, not PMI_RANK",
            &[
                ("PMI_ID", "3"),
                ("PMI_PORT", "node1:4567"),
                ("MPI_LOCALRANKID", "1"),
            ],
            role(L::Mpich).rank(3).local(1).multi(),
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
            role(L::CrayPals)
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
            role(L::Mvapich2).ranks(1, 1, 2).multi(),
            &[],
        ),
        case(
            "pmix alone gives only the rank",
            &[
                ("PMIX_RANK", "6"),
                ("PMIX_NAMESPACE", "prterun-host-1234@1"),
            ],
            role(L::Pmix).rank(6).multi(),
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
            role(L::Pmix).ranks(3, 1, 4).node(1).multi(),
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
            role(L::Slurm).ranks(4, 0, 8).node(1).master(true).multi(),
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
            role(L::Slurm).rank(1).node(0).master(false).multi(),
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
            role(L::Slurm),
            &[],
        ),
        case(
            "slurm batch pseudo step",
            &[("SLURM_STEP_ID", "4294967291"), ("SLURM_PROCID", "0")],
            role(L::Slurm),
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
            role(L::Torchrun)
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
            role(L::Torchrun).ranks(0, 0, 2).node(0).multi(),
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
            role(L::Horovod)
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
            role(L::DeepSpeed)
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
            role(L::Rank).ranks(0, 0, 4).node(0).multi(),
            &[],
        ),
        case(
            "bare RANK outside kubernetes is a process rank",
            &[("RANK", "1"), ("WORLD_SIZE", "2")],
            role(L::Rank).rank(1).world(2).multi(),
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
            role(L::KubeflowPytorch).node(2).multi(),
            &[],
        ),
        case(
            "kubeflow pytorchjob pod with PET_NODE_RANK",
            &[("PET_NODE_RANK", "0"), ("PET_NNODES", "2"), ("RANK", "0")],
            role(L::KubeflowPytorch).node(0).multi(),
            &[],
        ),
        case(
            "kubeflow mpijob worker pod entrypoint",
            &[("K_MPI_JOB_ROLE", "worker")],
            role(L::KubeflowMpi).multi(),
            &[],
        ),
        case(
            "kubeflow mpijob rank: open mpi wins",
            &[
                ("K_MPI_JOB_ROLE", "worker"),
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "2"),
            ],
            role(L::OpenMpi).rank(1).world(2).multi(),
            &[],
        ),
        case(
            "azure batch master node",
            &[
                ("AZ_BATCH_IS_CURRENT_NODE_MASTER", "true"),
                ("AZ_BATCH_MASTER_NODE", "10.0.0.4:6000"),
            ],
            role(L::AzureBatch).master(true).multi(),
            &[],
        ),
        case(
            "azure batch master flag is compared case-insensitively",
            &[("AZ_BATCH_IS_CURRENT_NODE_MASTER", "True")],
            role(L::AzureBatch).master(true).multi(),
            &[],
        ),
        case(
            "trap: AZ_BATCH_IS_CURRENT_NODE_MASTER=false is false",
            &[
                ("AZ_BATCH_IS_CURRENT_NODE_MASTER", "false"),
                ("AZ_BATCH_MASTER_NODE", "10.0.0.5:6000"),
            ],
            role(L::AzureBatch).master(false).multi(),
            &[],
        ),
        case(
            "azure batch master by address, this node",
            &[
                ("AZ_BATCH_MASTER_NODE", "10.0.0.5:6000"),
                ("AZ_BATCH_HOST_LIST", "10.0.0.5,10.0.0.6"),
            ],
            role(L::AzureBatch).master(true).multi(),
            &[],
        ),
        case(
            "azure batch master by address, another node",
            &[("AZ_BATCH_MASTER_NODE", "10.0.0.4:6000")],
            role(L::AzureBatch).master(false).multi(),
            &[],
        ),
        case(
            "azure ml mpi: ranks from open mpi, master from AZ_BATCHAI_MPI_MASTER_NODE",
            &[
                ("OMPI_COMM_WORLD_RANK", "0"),
                ("OMPI_COMM_WORLD_SIZE", "2"),
                ("AZ_BATCHAI_MPI_MASTER_NODE", "node02"),
            ],
            role(L::OpenMpi).rank(0).world(2).master(true).multi(),
            &[],
        ),
        // --- precedence ---
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
            role(L::Torchrun).ranks(3, 3, 8).multi(),
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
            role(L::Mpich).rank(2).world(4).multi(),
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
            role(L::Torchrun).rank(1).world(2).node(0).multi(),
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
            role(L::OpenMpi).rank(6).multi(),
            &[],
        ),
        case(
            "mvapich2 over pmi",
            &[("PMI_RANK", "8"), ("MV2_COMM_WORLD_RANK", "7")],
            role(L::Mvapich2).rank(7).multi(),
            &[],
        ),
        case(
            "pmi over pmix",
            &[("PMIX_RANK", "9"), ("PMI_RANK", "8")],
            role(L::Mpich).rank(8).multi(),
            &[],
        ),
        case(
            "mpi over horovod over bare RANK",
            &[("RANK", "5"), ("HOROVOD_RANK", "4"), ("PMIX_RANK", "3")],
            role(L::Pmix).rank(3).multi(),
            &[],
        ),
        case(
            "horovod over bare RANK",
            &[("RANK", "5"), ("HOROVOD_RANK", "4")],
            role(L::Horovod).rank(4).multi(),
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
            role(L::Rank).rank(1).local(1).master(false).multi(),
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
            role(L::Slurm).rank(1).node(1).master(true).multi(),
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
            want: role(L::Override).ranks(7, 3, 8).multi(),
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
            role(L::Override).rank(6).world(10).multi(),
            &[],
        ),
        case(
            "empty AMLX_* (exported as unknown by exec) are unset, silently",
            &[
                ("AMLX_RANK", ""),
                ("AMLX_LOCAL_RANK", " "),
                ("PMI_RANK", "1"),
            ],
            role(L::Mpich).rank(1).multi(),
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
            role(L::Mpich).rank(3).world(4).multi(),
            &[],
        ),
        // --- traps: bad values are unknown with exactly one warning ---
        case(
            "RANK=abc",
            &[("RANK", "abc"), ("WORLD_SIZE", "4")],
            role(L::Rank).world(4).multi(),
            &[&["RANK", "\"abc\"", "not a whole number"]],
        ),
        case(
            "LOCAL_RANK=-1",
            &[
                ("TORCHELASTIC_RUN_ID", "x"),
                ("RANK", "0"),
                ("LOCAL_RANK", "-1"),
            ],
            role(L::Torchrun).rank(0).multi(),
            &[&["LOCAL_RANK", "\"-1\"", "negative"]],
        ),
        case(
            "empty values",
            &[("OMPI_COMM_WORLD_RANK", ""), ("OMPI_COMM_WORLD_SIZE", "4")],
            role(L::OpenMpi).world(4).multi(),
            &[&["OMPI_COMM_WORLD_RANK", "empty"]],
        ),
        case(
            "range value PET_NNODES=1:4",
            &[("PET_NODE_RANK", "1"), ("PET_NNODES", "1:4")],
            role(L::KubeflowPytorch).node(1).multi(),
            &[&["PET_NNODES", "\"1:4\"", "range"]],
        ),
        case(
            "rank not below world size",
            &[
                ("PMI_RANK", "4"),
                ("PMI_SIZE", "4"),
                ("MPI_LOCALRANKID", "0"),
            ],
            role(L::Mpich).local(0).world(4).multi(),
            &[&["PMI_RANK", "\"4\"", "PMI_SIZE=4"]],
        ),
        case(
            "local rank not below local size",
            &[
                ("HOROVOD_RANK", "1"),
                ("HOROVOD_LOCAL_RANK", "2"),
                ("HOROVOD_LOCAL_SIZE", "2"),
            ],
            role(L::Horovod).rank(1).local_world(2).multi(),
            &[&["HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE=2"]],
        ),
        case(
            "zero world size",
            &[("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "0")],
            role(L::Rank).rank(0).local(0).multi(),
            &[&["WORLD_SIZE", "zero"]],
        ),
        case(
            "bad master flag",
            &[("AZ_BATCH_IS_CURRENT_NODE_MASTER", "yes")],
            role(L::AzureBatch).multi(),
            &[&[
                "AZ_BATCH_IS_CURRENT_NODE_MASTER",
                "\"yes\"",
                "true or false",
            ]],
        ),
        case(
            "bad AMLX_RANK falls back to the launcher",
            &[("AMLX_RANK", "first"), ("PMI_RANK", "1")],
            role(L::Mpich).rank(1).multi(),
            &[&["AMLX_RANK", "\"first\""]],
        ),
        case(
            "kubeflow node rank not below node count",
            &[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("RANK", "3"),
                ("WORLD_SIZE", "3"),
            ],
            role(L::KubeflowPytorch).multi(),
            &[&["RANK", "WORLD_SIZE=3", "node rank"]],
        ),
        case(
            "bad slurm node list",
            &[
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "0"),
                ("SLURM_STEP_NODELIST", "node["),
            ],
            role(L::Slurm).rank(0).multi(),
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
            role(L::Torchrun).multi(),
            &[&["RANK="], &["LOCAL_RANK="], &["WORLD_SIZE="]],
        ),
        case(
            "bad kubeflow mpi role",
            &[("K_MPI_JOB_ROLE", "boss")],
            role(L::KubeflowMpi).multi(),
            &[&["K_MPI_JOB_ROLE", "\"boss\""]],
        ),
    ]
}

#[test]
fn run_mode_table() {
    for case in cases() {
        let env: HashMap<String, String> = case
            .env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let got = detect_on(&env, &case.overrides, &FakeHost);
        assert_eq!(got.role, case.want, "case {:?}", case.name);
        assert_eq!(
            got.warnings.len(),
            case.warnings.len(),
            "case {:?}: warnings {:?}",
            case.name,
            got.warnings
        );
        for (warning, fragments) in got.warnings.iter().zip(case.warnings) {
            for fragment in *fragments {
                assert!(
                    warning.contains(fragment),
                    "case {:?}: warning {warning:?} lacks {fragment:?}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn alone() {
    let cases = [
        (role(L::None), true),
        (role(L::Slurm), true),
        (role(L::AzureBatch).multi(), false),
        (role(L::Rank).world(1).multi(), true),
        (role(L::Rank).world(2), false),
    ];
    for (role, want) in cases {
        assert_eq!(role.alone(), want, "{role:?}");
    }
}

#[test]
fn launcher_names() {
    let cases = [
        (L::OpenMpi, "open-mpi"),
        (L::Mpich, "mpich"),
        (L::CrayPals, "cray-pals"),
        (L::DeepSpeed, "deepspeed"),
        (L::KubeflowPytorch, "kubeflow-pytorch"),
        (L::AzureBatch, "azure-batch"),
        (L::None, "none"),
    ];
    for (launcher, name) in cases {
        assert_eq!(launcher.to_string(), name);
    }
}
