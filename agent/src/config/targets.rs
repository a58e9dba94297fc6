//! Named run targets for `amlx-agent run -t NAME`: `[targets.NAME]` tables in the config
//! file, or in `.amlx/targets.toml` in the project (which wins for a name in both).
//!
//! ```toml
//! [targets.remotevm]
//! kind = "ssh"
//! host = "10.0.0.4"
//! user = "azureuser"
//! identity_file = "~/.ssh/id_ed25519"
//! image = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04"
//! ranks_count = 4
//! env = { EPOCHS = "2" }
//! ```
//!
//! Unknown keys and bad values are errors naming the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::file::{FileContext, read_bounded};
use super::value::{FromConfig, Parsed};
use crate::policy::RankSpec;

/// Where a project's own targets file lives, relative to the project folder.
pub const PROJECT_TARGETS_FILE: &str = ".amlx/targets.toml";
/// Most processes one run starts (a typo guard, like `demo --ranks-count`).
pub const MAX_RANKS_COUNT: u32 = 64;

/// What kind of place a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// This machine, in the project folder.
    Local,
    /// A container on the local Docker engine.
    Docker,
    /// A remote Linux host over SSH (directly, or in Docker there with `image`).
    Ssh,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Local => "local",
            TargetKind::Docker => "docker",
            TargetKind::Ssh => "ssh",
        })
    }
}

impl FromStr for TargetKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "local" => Ok(TargetKind::Local),
            "docker" => Ok(TargetKind::Docker),
            "ssh" => Ok(TargetKind::Ssh),
            _ => Err(format!(
                "invalid target kind {text:?}: expected one of local, docker, ssh"
            )),
        }
    }
}

impl FromConfig for TargetKind {
    fn from_config(text: &str) -> Result<Self, String> {
        text.parse()
    }
}

/// One named target, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub name: String,
    pub kind: TargetKind,
    /// ssh: the host name or address.
    pub host: Option<String>,
    /// ssh: the remote user; `None`: ssh's own default.
    pub user: Option<String>,
    /// ssh: the port; `None`: ssh's own default (22, or the ssh config's).
    pub port: Option<u16>,
    /// ssh: the private key; `None`: the SSH agent and ssh's default keys.
    pub identity_file: Option<PathBuf>,
    /// ssh: an ssh config file to use instead of the user's (`ssh -F`).
    pub ssh_config: Option<PathBuf>,
    /// ssh: where on the host the agent and the project copies live; `None`:
    /// `~/.cache/amlx`.
    pub remote_dir: Option<String>,
    /// docker, or ssh with Docker on the host: the image the step runs in.
    pub image: Option<String>,
    /// A Dockerfile (relative to the project folder) to build `image` from first.
    pub build: Option<PathBuf>,
    /// Extra variables for the step.
    pub env: BTreeMap<String, String>,
    /// Processes to start; `None`: the command line's (default 1).
    pub ranks_count: Option<u32>,
    /// Which ranks wait for VS Code; `None`: the command line's (default 0).
    pub ranks: Option<String>,
    /// Where it was defined: `file:line`, for messages.
    pub defined_at: String,
}

/// `[targets.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetSection {
    kind: Parsed<TargetKind>,
    host: Option<String>,
    user: Option<String>,
    #[serde(default, deserialize_with = "ssh_port")]
    port: Option<u16>,
    identity_file: Option<PathBuf>,
    ssh_config: Option<PathBuf>,
    remote_dir: Option<String>,
    image: Option<String>,
    build: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "ranks_count")]
    ranks_count: Option<u32>,
    #[serde(default, deserialize_with = "rank_spec")]
    ranks: Option<String>,
}

// Checked while deserializing, so the error points at the key's own line.
fn ssh_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(serde::de::Error::custom("port 0 is not an SSH port")),
        port => Ok(Some(port)),
    }
}

fn ranks_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let count = u32::deserialize(d)?;
    if (1..=MAX_RANKS_COUNT).contains(&count) {
        Ok(Some(count))
    } else {
        Err(serde::de::Error::custom(format!(
            "must be 1 to {MAX_RANKS_COUNT}"
        )))
    }
}

/// The text of a rank spec (`ranks = 0` or `"0-3"`), checked by parsing it.
/// `run` starts the processes itself, so only `all` and explicit ranks mean something.
fn rank_spec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let Parsed(text) = Parsed::<String>::deserialize(d)?;
    match text.parse::<RankSpec>().map_err(serde::de::Error::custom)? {
        RankSpec::All | RankSpec::Ranks(_) => Ok(Some(text)),
        _ => Err(serde::de::Error::custom(format!(
            "{text:?} depends on the job; `run` starts the processes itself, so list the \
             ranks (0, 0,2, 1-3) or say all"
        ))),
    }
}

/// The whole `.amlx/targets.toml`: nothing but targets.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct TargetsFile {
    pub targets: BTreeMap<String, Spanned<TargetSection>>,
}

/// Validates the `[targets.*]` tables of one file.
pub(super) fn into_specs(
    tables: BTreeMap<String, Spanned<TargetSection>>,
    ctx: &FileContext<'_>,
) -> Result<BTreeMap<String, TargetSpec>, ConfigError> {
    tables
        .into_iter()
        .map(|(name, table)| {
            let span = table.span();
            let spec = into_spec(&name, table.into_inner(), ctx, span.clone())?;
            Ok((name, spec))
        })
        .collect()
}

fn into_spec(
    name: &str,
    t: TargetSection,
    ctx: &FileContext<'_>,
    span: std::ops::Range<usize>,
) -> Result<TargetSpec, ConfigError> {
    let key = |k: &str| format!("targets.{name}.{k}");
    let fail = |k: &str, message: &str| ctx.error(Some(span.clone()), &key(k), message);
    if !valid_name(name) {
        return Err(ctx.error(
            Some(span.clone()),
            &format!("targets.{name}"),
            "a target name is letters, digits, '-' and '_' (and not local, docker or ssh, \
             which `--target` takes as kinds)",
        ));
    }
    let kind = t.kind.0;
    let remote_only = [
        ("host", t.host.is_some()),
        ("user", t.user.is_some()),
        ("port", t.port.is_some()),
        ("identity_file", t.identity_file.is_some()),
        ("ssh_config", t.ssh_config.is_some()),
        ("remote_dir", t.remote_dir.is_some()),
    ];
    match kind {
        TargetKind::Ssh => {
            let Some(host) = t.host.as_deref().filter(|h| !h.trim().is_empty()) else {
                return Err(fail("host", "an ssh target needs a host"));
            };
            // ssh would take `-o…` for an option (a targets file in a cloned repository
            // must not run commands through ProxyCommand that way).
            if !valid_ssh_word(host) {
                return Err(fail(
                    "host",
                    "not a host name: it must not start with '-' or hold spaces or control \
                     characters",
                ));
            }
            if let Some(user) = t.user.as_deref()
                && !valid_ssh_word(user)
            {
                return Err(fail(
                    "user",
                    "not a user name: it must not start with '-' or hold spaces or control \
                     characters",
                ));
            }
        }
        TargetKind::Local | TargetKind::Docker => {
            if let Some((k, _)) = remote_only.iter().find(|(_, set)| *set) {
                return Err(fail(
                    k,
                    &format!("only ssh targets take {k} (this one is {kind})"),
                ));
            }
        }
    }
    if kind == TargetKind::Local && (t.image.is_some() || t.build.is_some()) {
        let k = if t.image.is_some() { "image" } else { "build" };
        return Err(fail(
            k,
            "a local target runs no container; use kind = \"docker\"",
        ));
    }
    if kind == TargetKind::Ssh && t.build.is_some() {
        return Err(fail(
            "build",
            "build runs on this machine's engine: only docker targets take it",
        ));
    }
    if let Some(image) = &t.image
        && !valid_image(image)
    {
        return Err(fail("image", IMAGE_RULE));
    }
    if t.build.is_some() && t.image.is_none() {
        return Err(fail(
            "build",
            "build needs an image name to tag the build with",
        ));
    }
    if let Some(bad) = t.env.keys().find(|k| !valid_env_name(k)) {
        return Err(fail(
            &format!("env.{bad}"),
            "a variable name is letters, digits and '_', not starting with a digit",
        ));
    }
    let ranks = t.ranks;
    Ok(TargetSpec {
        name: name.to_owned(),
        kind,
        host: t.host,
        user: t.user,
        port: t.port,
        identity_file: t.identity_file,
        ssh_config: t.ssh_config,
        remote_dir: t.remote_dir.filter(|d| !d.trim().is_empty()),
        image: t.image,
        build: t.build,
        env: t.env,
        ranks_count: t.ranks_count,
        ranks,
        defined_at: format!(
            "{}:{}",
            ctx.path.display(),
            super::file::line_of(ctx.text, span.start)
        ),
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !matches!(name, "local" | "docker" | "ssh")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What an image name must be, said when it is not (a targets file or `--image`).
pub const IMAGE_RULE: &str = "not an image name: it must not start with '-' (docker would \
    read it as an option, such as --privileged) or hold spaces or control characters";

/// An image name docker cannot mistake for an option of `docker run` or split into words:
/// a cloned project's targets file names the image its `run` uses.
pub fn valid_image(image: &str) -> bool {
    valid_ssh_word(image)
}

/// A host or user name ssh cannot mistake for an option or split into words.
fn valid_ssh_word(word: &str) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && !word.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads a project's targets file; `Ok(None)` when it does not exist.
pub fn read_project_targets(
    project: &Path,
) -> Result<Option<BTreeMap<String, TargetSpec>>, ConfigError> {
    let path = project.join(PROJECT_TARGETS_FILE);
    // `symlink_metadata`: a dangling symlink is an error to report, not "no file".
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let text = read_bounded(&path)
        .map_err(|why| ConfigError::new(format!("{}: {why}", path.display())))?;
    parse_targets_file(&path, &text).map(Some)
}

/// Parses the text of a targets file read from `path`.
pub fn parse_targets_file(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, TargetSpec>, ConfigError> {
    let ctx = FileContext { path, text };
    let file: TargetsFile = ctx.parse_as()?;
    into_specs(file.targets, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BTreeMap<String, TargetSpec>, String> {
        parse_targets_file(Path::new("/p/.amlx/targets.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_target_parses() {
        let targets = parse(
            "[targets.remotevm]\nkind = \"ssh\"\nhost = \"10.0.0.4\"\nuser = \"me\"\nport = 2222\n\
             identity_file = \"/k/id\"\nimage = \"img:1\"\nranks_count = 4\nranks = \"all\"\n\
             env = { EPOCHS = \"2\" }\n\n[targets.box]\nkind = \"docker\"\nimage = \"x\"\n",
        )
        .expect("valid");
        let vm = &targets["remotevm"];
        assert_eq!(vm.kind, TargetKind::Ssh);
        assert_eq!(vm.port, Some(2222));
        assert_eq!(vm.ranks.as_deref(), Some("all"));
        assert_eq!(vm.env["EPOCHS"], "2");
        assert_eq!(vm.defined_at, "/p/.amlx/targets.toml:1");
        assert_eq!(targets["box"].defined_at, "/p/.amlx/targets.toml:12");
    }

    #[test]
    fn a_missing_project_file_is_none_and_a_dangling_link_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_project_targets(dir.path()).expect("no file").is_none());
        std::fs::create_dir(dir.path().join(".amlx")).expect("mkdir");
        std::os::unix::fs::symlink(
            "/nonexistent/targets.toml",
            dir.path().join(PROJECT_TARGETS_FILE),
        )
        .expect("symlink");
        let err = read_project_targets(dir.path()).expect_err("dangling link");
        assert!(err.to_string().contains(".amlx/targets.toml"), "{err}");
    }

    #[test]
    fn bad_targets_name_file_line_and_key() {
        let cases = [
            (
                "[targets.a]\nkind = \"ssh\"\nhots = \"x\"\n",
                "/p/.amlx/targets.toml:",
                "unknown key targets.a.hots",
            ),
            (
                "[targets.a]\nkind = \"vm\"\n",
                "/p/.amlx/targets.toml:2: targets.a.kind",
                "expected one of local, docker, ssh",
            ),
            (
                "\n[targets.a]\nkind = \"ssh\"\n",
                "/p/.amlx/targets.toml:2: targets.a.host",
                "an ssh target needs a host",
            ),
            (
                "[targets.a]\nkind = \"docker\"\nimage = \"--privileged\"\n",
                "/p/.amlx/targets.toml:1: targets.a.image",
                "must not start with '-' (docker would read it as an option",
            ),
            (
                "[targets.a]\nkind = \"ssh\"\nhost = \"h\"\nimage = \"-v/:/host\"\n",
                "targets.a.image",
                "not an image name",
            ),
            (
                "[targets.a]\nkind = \"local\"\nimage = \"x\"\n",
                "targets.a.image",
                "use kind = \"docker\"",
            ),
            (
                "[targets.a]\nkind = \"docker\"\nhost = \"x\"\n",
                "targets.a.host",
                "only ssh targets take host",
            ),
            (
                "[targets.a]\nkind = \"docker\"\nimage = \"x\"\nranks_count = 0\n",
                "targets.a.ranks_count",
                "must be 1 to 64",
            ),
            (
                "[targets.a]\nkind = \"docker\"\nimage = \"x\"\nranks = \"0-\"\n",
                "targets.a.ranks",
                "",
            ),
            (
                "[targets.a]\nkind = \"docker\"\nimage = \"x\"\nenv = { \"1X\" = \"y\" }\n",
                "targets.a.env.1X",
                "a variable name",
            ),
            (
                "[targets.docker]\nkind = \"docker\"\nimage = \"x\"\n",
                "targets.docker",
                "a target name is",
            ),
            (
                "[targets.a]\nkind = \"ssh\"\nhost = \"-oProxyCommand=touch x\"\n",
                "targets.a.host",
                "not a host name",
            ),
            (
                "[targets.a]\nkind = \"ssh\"\nhost = \"vm\"\nuser = \"-l root\"\n",
                "targets.a.user",
                "not a user name",
            ),
            (
                "[targets.a]\nkind = \"local\"\nranks = \"master\"\n",
                "targets.a.ranks",
                "list the ranks",
            ),
            (
                "[targets.a]\nhost = \"x\"\n",
                "/p/.amlx/targets.toml:1",
                "missing key targets.a.kind",
            ),
            ("[debug]\nenabled = true\n", "", "unknown key debug"),
            ("[targets.a\n", "/p/.amlx/targets.toml:1", "malformed TOML"),
            (
                "[targets.\"é\"]\nkind = \"local\"\n",
                "targets.é",
                "a target name is",
            ),
        ];
        for (text, place, message) in cases {
            let err = parse(text).expect_err(text);
            assert!(
                err.contains(place) && err.contains(message),
                "{text:?}: {err}"
            );
        }
    }
}
