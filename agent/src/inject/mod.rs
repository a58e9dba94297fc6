//! Debugger injection: how the step's argv is rewritten to run under debugpy.
//!
//! Two steps, each callable on its own:
//! 1. [`plan`] reads the argv and the `--inject` mode: run under debugpy, or leave the
//!    command alone (only `AMLX_DEBUG_*` exported) with a reason, or an error.
//! 2. [`rewrite`] builds `python <interpreter options> -c <bootstrap launcher> <target>
//!    <args>` for an [`Endpoint`], plus the environment additions: the [`bootstrap`]
//!    runs what `python -m debugpy <debugpy options> <target> <args>` runs when the
//!    step's interpreter can import debugpy, and the target without it (saying why)
//!    when it cannot, in one interpreter either way.
//!
//! debugpy 1.8 facts this relies on (read in `debugpy/server/cli.py` and `api.py`):
//! - `--connect` blocks the step before its first line until the IDE has sent
//!   `configurationDone`, i.e. until its breakpoints are set: a breakpoint on line N is
//!   hit reliably. `--wait-for-client` is accepted with `--connect` but adds nothing
//!   (the wait it performs is already over), so [`rewrite`] leaves it out in connect
//!   mode. If nobody listens on the address, the step dies at once with
//!   `ConnectionRefusedError`: the sidecar must listen before the step starts. Closing
//!   the accepted socket does *not* release a step that is still waiting; a DAP
//!   `configurationDone` request does (the sidecar sends one at the attach timeout:
//!   `session::dap`).
//! - `--listen` returns as soon as its adapter listens; without `--wait-for-client` user
//!   code runs at once and only breakpoints set after the attach are honoured. With it,
//!   the step waits (without limit) for the IDE's `configurationDone`.
//! - `PYTHONBREAKPOINT=debugpy.breakpoint` makes `breakpoint()` stop in the IDE (and do
//!   nothing while no IDE is attached). Interpreters started with `-E` or `-I` ignore
//!   it; their options are kept as the user wrote them.
//! - If `DEBUGPY_RUNNING=true` is inherited, `-m debugpy` neither listens nor connects
//!   and runs the target undebugged without a word, so [`plan`] refuses to inject.
//! - Python 3.11+ freezes stdlib modules, and debugpy then warns it may miss
//!   breakpoints in them; `-Xfrozen_modules=off` is added (older interpreters ignore
//!   unknown `-X` options) unless the step sets `frozen_modules` itself.
//! - debugpy defaults to `subProcess=true`: every Python child (DataLoader workers,
//!   `multiprocessing` pools, `subprocess` calls) would open its own debug connection to
//!   the same address — through the relay in connect mode — and in connect mode each
//!   child would stop until the IDE configured it, stalling training. The agent debugs
//!   the processes its policy selects, each with its own port, so [`rewrite`] passes
//!   `--configure-subProcess false` unless asked otherwise ([`DebugpyOptions`]).
//!   Children still inherit `DEBUGPY_RUNNING=true`, so an agent in front of a child
//!   reports that it cannot inject there.

pub mod bootstrap;
pub mod prior_art;
pub mod python_argv;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

use crate::process::command_line;
use crate::role::Env;
use crate::session::{DebugMode, keyword_enum};

pub use prior_art::PriorArt;
pub use python_argv::{NotInjectable, PythonCommand, Target};

/// `--inject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectMode {
    /// debugpy for Python commands, otherwise only the exported variables.
    #[default]
    Auto,
    /// Always wrap with debugpy.
    Debugpy,
    /// Only export `AMLX_DEBUG_PORT` and friends, for code that calls debugpy itself.
    None,
}

keyword_enum!(InjectMode, "inject mode", "auto" => InjectMode::Auto, "debugpy" => InjectMode::Debugpy, "none" => InjectMode::None);

/// The variable debugpy sets in the debuggee and every child it starts.
pub const DEBUGPY_RUNNING: &str = "DEBUGPY_RUNNING";
/// Routes `breakpoint()` in user code to the debugger. Set even when the step's
/// environment has another hook: a stdin debugger like pdb would hang a cluster job.
pub const PYTHONBREAKPOINT: (&str, &str) = ("PYTHONBREAKPOINT", "debugpy.breakpoint");
/// Added to the interpreter options so breakpoints in frozen stdlib modules bind.
const FROZEN_MODULES_OFF: &str = "-Xfrozen_modules=off";

/// What to do with the step's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run it under debugpy: check availability, then [`rewrite`].
    Debugpy(PythonCommand),
    /// Run it unchanged; only the `AMLX_DEBUG_*` variables tell the step about the port.
    Unchanged(Skip),
}

/// Why the command runs unchanged. Log [`Skip::Disabled`] at debug level, a
/// non-Python command at info level, [`Skip::AlreadyDebugged`] as a warning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("--inject none: the step gets AMLX_DEBUG_PORT and starts debugpy itself")]
    Disabled,
    #[error("not injecting debugpy ({0}); the step gets AMLX_DEBUG_PORT only")]
    NotInjectable(NotInjectable),
    #[error(
        "not injecting debugpy: DEBUGPY_RUNNING=true says this process tree already runs under debugpy, where a second one would silently do nothing"
    )]
    AlreadyDebugged,
}

/// Injection that cannot go ahead; each message is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(
        "--inject debugpy: cannot run `{command}` under debugpy: {reason}; use --inject none to only export AMLX_DEBUG_PORT"
    )]
    NotInjectable {
        command: String,
        reason: NotInjectable,
    },
    #[error(
        "--inject debugpy: DEBUGPY_RUNNING=true is inherited, so a nested debugpy would silently do nothing; unset it or use --inject none"
    )]
    AlreadyDebugged,
    #[error("direct mode needs the node's IP address to listen on; pass --node-ip")]
    NoNodeIp,
}

/// Decides whether the step runs under debugpy.
///
/// `auto`: Python commands are injected, anything else runs unchanged with a reason.
/// `debugpy`: Python commands only; anything else is an error naming the command.
/// `none`: never rewritten. In both injecting modes an inherited `DEBUGPY_RUNNING=true`
/// stops injection (a skip in `auto`, an error in `debugpy`).
pub fn plan(mode: InjectMode, argv: &[OsString], env: &dyn Env) -> Result<Plan, InjectError> {
    if mode == InjectMode::None {
        return Ok(Plan::Unchanged(Skip::Disabled));
    }
    let parsed = match python_argv::parse(argv) {
        Ok(parsed) => parsed,
        Err(reason) if mode == InjectMode::Auto => {
            return Ok(Plan::Unchanged(Skip::NotInjectable(reason)));
        }
        Err(reason) => {
            return Err(InjectError::NotInjectable {
                command: command_line(argv),
                reason,
            });
        }
    };
    if env.var(DEBUGPY_RUNNING).as_deref() == Some("true") {
        return match mode {
            InjectMode::Auto => Ok(Plan::Unchanged(Skip::AlreadyDebugged)),
            _ => Err(InjectError::AlreadyDebugged),
        };
    }
    Ok(Plan::Debugpy(parsed))
}

/// Where debugpy listens or connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// connect and listen use loopback (the sidecar relays); direct uses the node IP.
    pub mode: DebugMode,
    /// The reserved debug port.
    pub port: u16,
    /// The node's address; required in direct mode, unused otherwise.
    pub node_ip: Option<IpAddr>,
}

impl Endpoint {
    /// The socket address debugpy is given.
    pub fn address(&self) -> Result<SocketAddr, InjectError> {
        let ip = match self.mode {
            DebugMode::Connect | DebugMode::Listen => IpAddr::V4(Ipv4Addr::LOCALHOST),
            DebugMode::Direct => self.node_ip.ok_or(InjectError::NoNodeIp)?,
        };
        Ok(SocketAddr::new(ip, self.port))
    }
}

/// debugpy switches beyond the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DebugpyOptions {
    /// listen/direct: hold the step until the IDE has attached and set its breakpoints.
    /// Ignored in connect mode, which always holds the step (see the module docs).
    pub wait_for_client: bool,
    /// Let debugpy follow Python child processes (debugpy's own default; off here, see
    /// the module docs).
    pub sub_process: bool,
    /// Where the bootstrap reports whether debugpy could be imported (a pipe the step
    /// inherits); `None`: nowhere.
    pub report_fd: Option<std::os::fd::RawFd>,
    /// `--on-debug-failure fail`: without debugpy the step exits 1 instead of running.
    pub fail_without_debugpy: bool,
    /// With `wait_for_client`: how long after its start the step cancels debugpy's wait
    /// itself if it still waits (the sidecar's release failed); `None`: never.
    pub release_after: Option<std::time::Duration>,
}

/// The rewritten command and what to add to its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// `[env NAME=VALUE...] python <options> -c <launcher> <target> <args>`.
    pub argv: Vec<OsString>,
    /// Variables to add to the step's environment (the bootstrap text among them).
    pub env: Vec<(OsString, OsString)>,
    /// What debugpy's command line gets in front of the target (`--connect ADDR …`).
    pub debugpy_args: Vec<String>,
}

/// Builds the command line that runs `python` under debugpy at `endpoint`.
///
/// ```
/// use amlx_agent::inject::{self, bootstrap, DebugpyOptions, Endpoint, python_argv};
/// use amlx_agent::session::DebugMode;
/// let argv = ["python3", "-u", "step.py", "--lr", "0.1"].map(Into::into);
/// let python = python_argv::parse(&argv).unwrap();
/// let endpoint = Endpoint { mode: DebugMode::Connect, port: 5678, node_ip: None };
/// let injected = inject::rewrite(&python, &endpoint, &DebugpyOptions::default()).unwrap();
/// assert_eq!(
///     injected.argv.join(" ".as_ref()).to_string_lossy(),
///     format!("python3 -u -Xfrozen_modules=off -c {} step.py --lr 0.1", bootstrap::LAUNCHER)
/// );
/// assert_eq!(
///     injected.debugpy_args.join(" "),
///     "--connect 127.0.0.1:5678 --configure-subProcess false"
/// );
/// ```
pub fn rewrite(
    python: &PythonCommand,
    endpoint: &Endpoint,
    options: &DebugpyOptions,
) -> Result<Injected, InjectError> {
    let address = endpoint.address()?;
    let switch = match endpoint.mode {
        DebugMode::Connect => "--connect",
        DebugMode::Listen | DebugMode::Direct => "--listen",
    };
    // SocketAddr prints IPv6 as [addr]:port, which debugpy strips back to addr.
    let mut debugpy_args = vec![switch.to_owned(), address.to_string()];
    if options.wait_for_client && endpoint.mode != DebugMode::Connect {
        debugpy_args.push("--wait-for-client".to_owned());
    }
    let sub_process = if options.sub_process { "true" } else { "false" };
    debugpy_args.extend(["--configure-subProcess".to_owned(), sub_process.to_owned()]);
    let mut argv: Vec<OsString> = python.prefix.clone();
    argv.push(python.interpreter.clone());
    argv.extend(python.options.iter().cloned());
    if !python.has_x_option("frozen_modules") {
        argv.push(FROZEN_MODULES_OFF.into());
    }
    argv.extend(["-c", bootstrap::LAUNCHER].map(OsString::from));
    match &python.target {
        Target::Script(script) => argv.push(script.clone()),
        Target::Module(module) => argv.extend(["-m".into(), module.clone()]),
        Target::Code(code) => argv.extend(["-c".into(), code.clone()]),
    }
    argv.extend(python.args.iter().cloned());
    let (key, value) = PYTHONBREAKPOINT;
    let text = bootstrap::text(
        &debugpy_args,
        options.report_fd,
        options.fail_without_debugpy,
        options.release_after,
    );
    Ok(Injected {
        argv,
        env: vec![
            (key.into(), value.into()),
            (bootstrap::BOOTSTRAP_VAR.into(), text.into()),
        ],
        debugpy_args,
    })
}

#[cfg(test)]
mod tests;
