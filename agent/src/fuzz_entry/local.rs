//! Fuzz entry points for what arrives on the node itself: the config file and `AMLX_*`
//! variables, launcher variables (role detection), rank specs and port ranges, durations,
//! a step's argv (debugpy injection), an existing launch.json, lock-file and session
//! records, `/proc` lines, and MLflow's answers.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};

use super::{fields, selector, text};
use crate::config::{self, Flags, parse_duration};
use crate::inject::{self, DebugpyOptions, Endpoint, InjectMode, Plan, prior_art, python_argv};
use crate::launch_json::{self, DEFAULT_PORT_BASE, LaunchSpec};
use crate::policy::{self, Policy, RankSpec};
use crate::ports::PortRange;
use crate::ports::record::HolderRecord;
use crate::process;
use crate::publish::holder::{self, Holder};
use crate::publish::mlflow;
use crate::publish::status_file::{SessionEntry, StatusRecord};
use crate::role::{self, Host, Overrides};
use crate::session::DebugMode;

/// The variables the config's environment layer reads (`config/env.rs`).
const CONFIG_VARS: [&str; 19] = [
    "AMLX_DEBUG",
    "AMLX_RANKS",
    "AMLX_MAX_TARGETS_PER_NODE",
    "AMLX_PORT_RANGE",
    "AMLX_LOCK_DIR",
    "AMLX_NODE_IP",
    "AMLX_DEBUG_MODE",
    "AMLX_ON_DEBUG_FAILURE",
    "AMLX_ATTACH_TIMEOUT",
    "AMLX_INJECT",
    "AMLX_WAIT_FOR_CLIENT",
    "AMLX_LOG_FORMAT",
    "AMLX_RELAY_CONNECTION_STRING",
    "AMLX_RELAY_HC",
    "AMLX_RELAY_CA_FILE",
    "AMLX_RELAY_INSECURE_WS",
    "AMLX_RELAY_MAX_TUNNELS",
    "AMLX_RELAY_SPARE_TUNNELS",
    "AMLX_STATE_DIR",
];

/// The variables role detection reads (`role/*.rs`), launcher by launcher.
const ROLE_VARS: [&str; 61] = [
    "AMLX_AGENT_ACTIVE",
    "AMLX_AGENT_PID",
    "AMLX_AGENT_PROCESS",
    "AMLX_AGENT_STEP_KIND",
    "AMLX_RANK",
    "AMLX_LOCAL_RANK",
    "AMLX_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "GROUP_RANK",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "PET_NNODES",
    "PET_NODE_RANK",
    "HOROVOD_RANK",
    "HOROVOD_SIZE",
    "HOROVOD_LOCAL_RANK",
    "HOROVOD_LOCAL_SIZE",
    "HOROVOD_CROSS_RANK",
    "CROSS_RANK",
    "CROSS_SIZE",
    "LOCAL_SIZE",
    "K_MPI_JOB_ROLE",
    "KUBERNETES_SERVICE_HOST",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_RANK",
    "PMI_SIZE",
    "PMI_ID",
    "PMI_LOCAL_RANK",
    "PMI_LOCAL_SIZE",
    "MPI_LOCALRANKID",
    "MPI_LOCALNRANKS",
    "PALS_RANKID",
    "PALS_LOCAL_RANKID",
    "PALS_NODEID",
    "MV2_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_LOCAL_RANK",
    "MV2_COMM_WORLD_LOCAL_SIZE",
    "PMIX_RANK",
    "PMIX_NAMESPACE",
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_STEP_ID",
    "SLURM_STEPID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_NTASKS",
    "SLURM_NPROCS",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_NODELIST",
    "SLURMD_NODENAME",
    "AZ_BATCH_IS_CURRENT_NODE_MASTER",
    "AZ_BATCH_MASTER_NODE",
    "AZ_BATCH_HOST_LIST",
];

/// Node names the fuzzed host answers to (the seeds use them in host lists).
const FUZZ_HOSTNAME: &str = "node-0";

/// An environment from NUL-separated records `index-byte value`: the byte picks one of
/// `names`, the rest is its value (so the fuzzer spends its time on values).
fn env_from_records(data: &[u8], names: &[&str]) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for record in data.split(|b| *b == 0) {
        if let (Some((index, value)), Some(count)) =
            (record.split_first(), names.len().checked_sub(1))
        {
            let name = names
                .get(usize::from(*index) % (count + 1))
                .copied()
                .unwrap_or_default();
            env.insert(name.to_owned(), text(value));
        }
    }
    env
}

/// The config file's text, then (after a NUL) `AMLX_*` variables, layered as `exec` does;
/// the text also as a targets file and as an ssh address.
pub fn config_file_and_env(data: &[u8]) {
    let mut parts = data.splitn(2, |b| *b == 0);
    let file_text = text(parts.next().unwrap_or_default());
    let env = env_from_records(parts.next().unwrap_or_default(), &CONFIG_VARS);
    let flags = Flags {
        config: None,
        log_format: None,
        policy: None,
        ports: None,
        node: None,
        session: None,
        state_dir: None,
        relay: None,
        max_tunnels: None,
        spare_tunnels: None,
        step: None,
    };
    let file = Some((Path::new("fuzz.toml"), file_text.as_str()));
    match config::layer(&flags, &env, file) {
        Ok(settings) => {
            let _ = format!("{settings:?}");
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
    // The same text as a project's .amlx/targets.toml, and as `run -t ssh://…`.
    match config::parse_targets_file(Path::new(".amlx/targets.toml"), &file_text) {
        Ok(targets) => {
            let _ = format!("{targets:?}");
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
    let _ = crate::run::target::parse_ssh_address(&file_text);
}

/// A test host for role detection: named [`FUZZ_HOSTNAME`], owning the loopback addresses.
#[derive(Debug)]
struct FuzzHost {
    named: bool,
}

impl Host for FuzzHost {
    fn hostname(&self) -> Option<String> {
        self.named.then(|| FUZZ_HOSTNAME.to_owned())
    }

    fn has_addr(&self, addr: IpAddr) -> bool {
        addr.is_loopback()
    }
}

/// Launcher variables (records as in `env_from_records`) through role detection and
/// every policy; the first byte picks host name and overrides.
pub fn role_environment(data: &[u8]) {
    let (shape, rest) = selector(data);
    let env = env_from_records(rest, &ROLE_VARS);
    let host = FuzzHost {
        named: shape & 1 == 0,
    };
    let overrides = Overrides {
        rank: (shape & 2 != 0).then_some(u32::from(shape >> 4)),
        local_rank: (shape & 4 != 0).then_some(0),
        world_size: (shape & 8 != 0).then_some(u32::from(shape >> 4)),
    };
    let detection = role::detect_on(&env, &overrides, &host);
    // The lineage the shims' guard reads, seen from a process that may or may not be
    // the step (pid and parent pid from the shape byte).
    let pid = u32::from(shape >> 4);
    let lineage = process::lineage::lineage_of(&env, pid, pid.wrapping_add(1));
    let same_role = role::matches_exported(&env, &detection.role);
    let same_role_ancestor = match lineage {
        process::lineage::Lineage::Descendant {
            agent_pid,
            ancestor,
        } if same_role => Some(policy::Ancestor {
            agent_pid,
            kind: ancestor,
        }),
        _ => None,
    };
    for ranks in [
        RankSpec::default(),
        RankSpec::All,
        RankSpec::Master,
        RankSpec::Local0,
    ] {
        for max_targets_per_node in [None, Some(1)] {
            let policy = Policy {
                enabled: true,
                ranks: ranks.clone(),
                max_targets_per_node,
            };
            let _ = policy::decide(&policy, &detection.role);
            for kind in [
                policy::ProcessKind::Step,
                policy::ProcessKind::SpawnWorker,
                policy::ProcessKind::Launcher("torchrun"),
                policy::ProcessKind::Helper("a helper"),
            ] {
                let facts = policy::StepFacts {
                    kind,
                    same_role_ancestor,
                };
                let _ = policy::decide_step(&policy, &detection.role, &facts);
            }
        }
    }
}

/// `--ranks` text (and the same text as a launch-json rank list and a port range). A
/// spec's text form must parse back to the same spec.
pub fn rank_spec_text(data: &[u8]) {
    let text = text(data);
    if let Ok(spec) = text.parse::<RankSpec>() {
        let shown = spec.to_string();
        match shown.parse::<RankSpec>() {
            Ok(again) => assert_eq!(again, spec, "{text:?} shows as {shown:?}"),
            Err(err) => panic!("{text:?} shows as {shown:?}, which does not parse: {err}"),
        }
        for rank in [0, 1, 7, u32::MAX] {
            let _ = spec.contains_rank(rank);
        }
    }
    let _ = launch_json::targets_from_ranks(&text, DEFAULT_PORT_BASE);
    let _ = launch_json::targets_from_ranks(&text, u16::MAX);
    let _ = text.parse::<PortRange>();
}

/// A duration from any layer (`--attach-timeout`, `AMLX_ATTACH_TIMEOUT`, the file).
pub fn duration_text(data: &[u8]) {
    let text = text(data);
    if let Ok(duration) = parse_duration(&text) {
        let shown = humantime::format_duration(duration).to_string();
        let _ = parse_duration(&shown);
    }
}

/// A step's argv (NUL-separated words) through prior-art reading, the injection plan and
/// the debugpy rewrite for every mode. The first byte picks the inject mode and whether
/// debugpy already runs. The same bytes are also read as a bootstrap report (what an
/// injected step writes to its sidecar).
pub fn inject_python_argv(data: &[u8]) {
    let _ = inject::bootstrap::read_report(data);
    let (shape, rest) = selector(data);
    let argv: Vec<OsString> = rest
        .split(|b| *b == 0)
        .map(|word| OsString::from_vec(word.to_vec()))
        .collect();
    let _ = prior_art::read(&argv);
    let _ = process::command_line(&argv);
    let _ = policy::kind_of(&argv);
    if let Some(program) = argv.first() {
        let _ = python_argv::is_python_interpreter(program);
    }
    let mut env = HashMap::new();
    if shape & 1 == 1 {
        env.insert("DEBUGPY_RUNNING".to_owned(), "true".to_owned());
    }
    let mode = match (shape >> 1) % 3 {
        0 => InjectMode::Auto,
        1 => InjectMode::Debugpy,
        _ => InjectMode::None,
    };
    let Ok(Plan::Debugpy(python)) = inject::plan(mode, &argv, &env) else {
        return;
    };
    let _ = python.env_assignments();
    let _ = python.display_interpreter();
    for mode in [DebugMode::Connect, DebugMode::Listen, DebugMode::Direct] {
        let endpoint = Endpoint {
            mode,
            port: 5678,
            node_ip: Some(IpAddr::from([10, 0, 0, 4])),
        };
        let options = DebugpyOptions {
            wait_for_client: shape & 8 != 0,
            sub_process: shape & 16 != 0,
            ..DebugpyOptions::default()
        };
        let _ = inject::rewrite(&python, &endpoint, &options);
    }
    let _ = crate::post_mortem::rewrite(&python, &["amlx-agent".to_owned()]);
    let agent = std::path::Path::new("/opt/amlx-agent");
    let _ = crate::post_mortem::helper_argv(agent, &argv, usize::from(shape >> 5));
}

/// The post-mortem hook's crash line as the helper reads it, the debugpy bootstrap's
/// report as the sidecar (or the keeper) reads it, both from the step's interpreter, and a
/// slot's record as a crashing rank reads another's.
pub fn post_mortem_crash(data: &[u8]) {
    use crate::inject::bootstrap::{Report, read_report};
    use crate::post_mortem::crash::Crash;
    match read_report(data) {
        Report::Missing(why) => assert!(!why.chars().any(char::is_control), "{why:?}"),
        Report::Started(port) => assert_ne!(port, Some(0)),
        Report::Silent => {}
    }
    if let Some(crash) = Crash::parse(data) {
        let summary = crash.summary();
        assert!(!summary.chars().any(char::is_control), "{summary:?}");
        let _ = crate::session::PostMortem { crash, first: true }.describe();
    }
    let _ = serde_json::from_slice::<crate::post_mortem::slots::SlotRecord>(data);
}

/// An existing launch.json (JSONC) merged with generated entries; a merged file must
/// merge again. The first byte picks the mode and the targets.
pub fn launch_json_merge(data: &[u8]) {
    let (shape, rest) = selector(data);
    let existing = text(rest);
    let mode = match shape % 3 {
        0 => DebugMode::Connect,
        1 => DebugMode::Listen,
        _ => DebugMode::Direct,
    };
    let ports: Vec<u16> = (0..u16::from(shape >> 6) + 1).map(|i| 5678 + i).collect();
    let Ok(targets) = launch_json::targets_from_ports(&ports) else {
        return;
    };
    let spec = LaunchSpec {
        mode,
        host: "127.0.0.1".to_owned(),
        targets,
        local_root: "${workspaceFolder}".to_owned(),
        remote_root: ".".to_owned(),
        post_mortem_port: None,
    };
    if let Ok(merged) = launch_json::merge(&existing, &spec)
        && let Err(err) = launch_json::merge(&merged, &spec)
    {
        panic!("a launch.json we wrote cannot be merged again: {err}\n{merged}");
    }
}

/// A port lock file's record, a session status record, and `/proc` lines, as read from
/// files another (possibly hostile or crashed) process wrote.
pub fn lock_records(data: &[u8]) {
    if let Some(record) = HolderRecord::from_bytes(data) {
        let _ = HolderRecord::from_bytes(&record.to_bytes());
    }
    if let Ok(record) = serde_json::from_slice::<StatusRecord>(data) {
        for holder in [Holder::Live, Holder::Dead, Holder::Unknown] {
            let entry = SessionEntry {
                path: PathBuf::from("fuzz.json"),
                record: record.clone(),
                holder,
            };
            let _ = (entry.state(), entry.reason());
        }
        let _ = serde_json::to_vec(&record);
    }
    let line = text(data);
    let _ = holder::parse_stat(&line);
    let _ = holder::parse_namespace_link(&line);
}

/// What an MLflow server answers: the tracking URI (`MLFLOW_TRACKING_URI`) and an error
/// body (`NUL` separates them).
pub fn mlflow_response(data: &[u8]) {
    let parts = fields(data, 2);
    let part = |i: usize| parts.get(i).map(|p| text(p)).unwrap_or_default();
    let _ = mlflow::rest_base(&part(0));
    let _ = mlflow::error_detail(&part(1));
}
