//! The run-mode table: every launcher family, the precedence rules and the traps.

mod families;
mod precedence;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use super::*;
use Launcher as L;

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

pub(super) trait RoleExt {
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

pub(super) struct Case {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
    overrides: Overrides,
    want: Role,
    /// One warning per entry, each containing every listed fragment.
    warnings: &'static [&'static [&'static str]],
}

pub(super) fn case(
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

fn cases() -> Vec<Case> {
    let mut all = families::cases();
    all.extend(precedence::cases());
    all.extend(precedence::traps());
    all
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
        (Role::unknown(L::None), true),
        (Role::unknown(L::Slurm), true),
        (Role::unknown(L::AzureBatch).multi(), false),
        (Role::unknown(L::Rank).world(1).multi(), true),
        (Role::unknown(L::Rank).world(2), false),
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

/// An environment where some variables hold bytes that are not valid Unicode.
struct WithGarbage {
    vars: HashMap<String, String>,
    garbage: &'static [&'static str],
}

impl Env for WithGarbage {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.var(name)
    }

    fn lookup(&self, name: &str) -> Result<Option<String>, NotUnicode> {
        match self.garbage.contains(&name) {
            true => Err(NotUnicode),
            false => Ok(self.var(name)),
        }
    }
}

/// A launcher variable that is not valid Unicode is unknown with one warning naming it,
/// like any other bad value, instead of silently unset.
#[test]
fn a_launcher_variable_that_is_not_unicode_is_unknown_with_a_warning() {
    let env = WithGarbage {
        vars: [("PMI_RANK", "2"), ("PMI_SIZE", "4")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        garbage: &["MPI_LOCALRANKID"],
    };
    let got = detect_on(&env, &Overrides::default(), &FakeHost);
    assert_eq!(got.role.rank, Some(2));
    assert_eq!(got.role.world_size, Some(4));
    assert_eq!(got.role.local_rank, None);
    assert_eq!(
        got.warnings,
        ["ignoring MPI_LOCALRANKID: its value is not valid UTF-8; treating it as unknown"]
    );
}
