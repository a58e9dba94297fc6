//! `--target TEXT` to a target: a kind (`local`, `docker`, `ssh://[USER@]HOST[:PORT]`) or
//! a name from the project's targets file or the config's `[targets.NAME]`.

use std::collections::BTreeMap;

use crate::config::{PROJECT_TARGETS_FILE, TargetKind, TargetSpec};

/// The scheme an SSH address starts with.
const SSH_SCHEME: &str = "ssh://";

/// The target `text` names; the project's file wins over the config for a name in both.
pub fn choose(
    text: &str,
    project: Option<&BTreeMap<String, TargetSpec>>,
    config: &BTreeMap<String, TargetSpec>,
) -> anyhow::Result<TargetSpec> {
    let plain = |kind| TargetSpec {
        name: text.to_owned(),
        kind,
        host: None,
        user: None,
        port: None,
        identity_file: None,
        ssh_config: None,
        remote_dir: None,
        image: None,
        build: None,
        env: BTreeMap::new(),
        ranks_count: None,
        ranks: None,
        defined_at: "the command line".to_owned(),
    };
    match text {
        "local" => return Ok(plain(TargetKind::Local)),
        "docker" => return Ok(plain(TargetKind::Docker)),
        _ => {}
    }
    if let Some(address) = text.strip_prefix(SSH_SCHEME) {
        let SshAddress { user, host, port } = parse_ssh_address(address)?;
        return Ok(TargetSpec {
            host: Some(host),
            user,
            port,
            ..plain(TargetKind::Ssh)
        });
    }
    if let Some(spec) = project
        .and_then(|targets| targets.get(text))
        .or_else(|| config.get(text))
    {
        return Ok(spec.clone());
    }
    let mut known: Vec<&str> = project
        .into_iter()
        .flat_map(|t| t.keys())
        .chain(config.keys())
        .map(String::as_str)
        .collect();
    known.sort_unstable();
    known.dedup();
    let known = if known.is_empty() {
        format!(
            "no named targets are defined ({PROJECT_TARGETS_FILE} or [targets.NAME] in the config)"
        )
    } else {
        format!("named targets: {}", known.join(", "))
    };
    anyhow::bail!(
        "unknown target {text:?}: expected local, docker, ssh://[USER@]HOST[:PORT] or a \
         name; {known}"
    )
}

/// Where an ssh target logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAddress {
    /// `None`: ssh's own default (the ssh config's, or the local user name).
    pub user: Option<String>,
    pub host: String,
    /// `None`: ssh's own default.
    pub port: Option<u16>,
}

/// `[USER@]HOST[:PORT]` (an IPv6 host in brackets) into its parts.
///
/// ```
/// use amlx_agent::run::target::parse_ssh_address;
/// let address = parse_ssh_address("me@[fd00::4]:2222").unwrap();
/// assert_eq!(address.user.as_deref(), Some("me"));
/// assert_eq!((address.host.as_str(), address.port), ("fd00::4", Some(2222)));
/// ```
pub fn parse_ssh_address(text: &str) -> anyhow::Result<SshAddress> {
    let bad = |why: &str| {
        anyhow::anyhow!("bad ssh address {text:?}: {why} (expected ssh://[USER@]HOST[:PORT])")
    };
    let text_trimmed = text.trim_end_matches('/');
    let (user, rest) = match text_trimmed.rsplit_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, text_trimmed),
    };
    if let Some(user) = user
        && (user.is_empty()
            || !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(bad(
            "the user name is empty or has characters ssh would misread",
        ));
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 host misses its ']'"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("text after ']'"))?,
            ),
        };
        (host, port)
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty()
        || host.starts_with('-')
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("the host is empty or not a host name"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not 1-65535"))
        })
        .transpose()?;
    Ok(SshAddress {
        user: user.map(str::to_owned),
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_addresses_parse_or_say_why_not() {
        type Want = Result<(Option<&'static str>, &'static str, Option<u16>), &'static str>;
        let cases: [(&str, Want); 10] = [
            ("host", Ok((None, "host", None))),
            ("me@host", Ok((Some("me"), "host", None))),
            ("me@host:2222", Ok((Some("me"), "host", Some(2222)))),
            ("[fd00::4]", Ok((None, "fd00::4", None))),
            ("10.0.0.4:22/", Ok((None, "10.0.0.4", Some(22)))),
            ("@host", Err("user name")),
            ("me@", Err("host is empty")),
            ("host:0", Err("not 1-65535")),
            ("host:99999", Err("not 1-65535")),
            ("-oProxyCommand=x", Err("not a host name")),
        ];
        for (text, want) in cases {
            let got = parse_ssh_address(text).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok((u, h, p))) => {
                    assert_eq!(
                        (got.user.as_deref(), got.host.as_str(), got.port),
                        (u, h, p),
                        "{text}"
                    );
                }
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: {got:?}, wanted {want:?}"),
            }
        }
        // Never a panic, whatever the bytes.
        for text in ["é@ü:1", "[", "[]:", "[::1]x", "a@b@c", ":", "\u{0}"] {
            let _ = parse_ssh_address(text);
        }
    }

    #[test]
    fn names_come_from_the_project_first_then_the_config() {
        let spec = |name: &str, image: &str| TargetSpec {
            image: Some(image.to_owned()),
            ..choose("docker", None, &BTreeMap::new())
                .expect("docker")
                .clone_named(name)
        };
        let project = BTreeMap::from([("gpu".to_owned(), spec("gpu", "project"))]);
        let config = BTreeMap::from([
            ("gpu".to_owned(), spec("gpu", "config")),
            ("cpu".to_owned(), spec("cpu", "config")),
        ]);
        let image = |text| choose(text, Some(&project), &config).expect(text).image;
        assert_eq!(image("gpu").as_deref(), Some("project"));
        assert_eq!(image("cpu").as_deref(), Some("config"));
        let err = choose("tpu", Some(&project), &config).expect_err("unknown");
        assert!(err.to_string().contains("named targets: cpu, gpu"), "{err}");
        let none = choose("tpu", None, &BTreeMap::new()).expect_err("unknown");
        assert!(
            none.to_string().contains("no named targets are defined"),
            "{none}"
        );
        let ssh = choose("ssh://me@vm:2200", None, &BTreeMap::new()).expect("ssh");
        assert_eq!(
            (ssh.kind, ssh.host.as_deref(), ssh.port),
            (TargetKind::Ssh, Some("vm"), Some(2200))
        );
    }

    impl TargetSpec {
        fn clone_named(&self, name: &str) -> TargetSpec {
            TargetSpec {
                name: name.to_owned(),
                ..self.clone()
            }
        }
    }
}
