//! The open-file limit of the relay commands (`relay serve`, `listen`, `connect`): every
//! relayed connection costs descriptors, so each command raises its soft `RLIMIT_NOFILE`
//! to the hard limit at start (as Go programs do) and says plainly when even the hard
//! limit is below what its caps need.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but relayed connections (listening socket, control
/// channel, log, the runtime's own).
pub const HEADROOM: u64 = 64;

/// What [`raise`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit in force afterwards.
    pub soft: u64,
    /// The hard limit, the most an unprivileged process can raise its soft limit to.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one and warns, naming `command` and the
/// setting (`cap`, e.g. "max_tunnels 5000 × 2 descriptors"), when `needed` descriptors do
/// not fit under it. Returns the limits, or `None` when they cannot be read.
pub fn raise(command: &str, needed: u64, cap: &str) -> Option<Limit> {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        tracing::warn!("{command}: cannot read the open-file limit; not raising it");
        return None;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let limit = Limit { soft, hard };
    if let Some(message) = shortfall(command, limit, needed, cap) {
        tracing::warn!("{message}");
    }
    Some(limit)
}

/// The warning when `needed` descriptors exceed the limit, `None` when they fit.
pub fn shortfall(command: &str, limit: Limit, needed: u64, cap: &str) -> Option<String> {
    let needed = needed.saturating_add(HEADROOM);
    if limit.soft >= needed {
        return None;
    }
    let why = if limit.soft < limit.hard {
        format!(
            "the open-file limit is {} (could not raise it to the hard limit {})",
            limit.soft, limit.hard
        )
    } else {
        format!("the hard open-file limit is {}", limit.hard)
    };
    Some(format!(
        "{command}: {why}, below the {needed} descriptors that {cap} plus {HEADROOM} need: \
         connections past about {} will fail to open; raise the hard limit (ulimit -Hn as \
         root, LimitNOFILE= in a systemd unit, --ulimit nofile= in docker) or lower the cap",
        limit.soft.saturating_sub(HEADROOM)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortfall_names_the_limit_and_the_cap() {
        let cases: &[(Limit, u64, Option<&str>)] = &[
            (
                Limit {
                    soft: 20000,
                    hard: 20000,
                },
                10000,
                None,
            ),
            (
                Limit {
                    soft: 10064,
                    hard: 10064,
                },
                10000,
                None,
            ),
            (
                Limit {
                    soft: 1024,
                    hard: 1024,
                },
                10000,
                Some("relay listen: the hard open-file limit is 1024, below the 10064 descriptors"),
            ),
            (
                Limit {
                    soft: 1024,
                    hard: 4096,
                },
                10000,
                Some(
                    "relay listen: the open-file limit is 1024 (could not raise it to the hard limit 4096)",
                ),
            ),
        ];
        for (limit, needed, want) in cases {
            let got = shortfall("relay listen", *limit, *needed, "max_tunnels 5000");
            match want {
                None => assert_eq!(got, None, "{limit:?}"),
                Some(want) => {
                    let got = got.expect("a warning");
                    assert!(got.starts_with(want), "{got}");
                    assert!(got.contains("max_tunnels 5000 plus 64"), "{got}");
                }
            }
        }
    }

    #[test]
    fn raise_leaves_the_soft_limit_at_the_hard_one() {
        let limit = raise("test", 0, "nothing").expect("getrlimit works on Linux");
        assert_eq!(limit.soft, limit.hard);
    }
}
