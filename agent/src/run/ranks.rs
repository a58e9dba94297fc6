//! Which ranks a run debugs (`--ranks` over `--ranks-count`), the block of debug ports
//! they get on the target (rank r: start + r), and the VS Code port each is routed to.

use std::net::{Ipv4Addr, TcpListener};

use anyhow::Context as _;

use super::relay::Route;
use crate::policy::RankSpec;
use crate::ports::PortRange;

/// Where a default debug port block may start on the target: above the ports people
/// configure by hand, below the kernel's usual ephemeral range (32768-60999 on Linux,
/// where a block could collide with outgoing connections).
const DEBUG_PORTS_FROM: u16 = 20000;
/// The end (exclusive) of that window.
const DEBUG_PORTS_TO: u16 = 32000;
/// Random blocks tried before giving up on finding free debug ports on this machine.
const DEBUG_PORT_TRIES: usize = 32;

/// The ranks that wait for VS Code, from `--ranks` and the number of processes.
pub(super) fn debugged_ranks(spec: &str, count: u32) -> anyhow::Result<Vec<u32>> {
    let parsed: RankSpec = spec.parse().with_context(|| format!("--ranks {spec:?}"))?;
    let ranks: Vec<u32> = match parsed {
        RankSpec::All => (0..count).collect(),
        RankSpec::Ranks(ranges) => {
            let mut ranks = std::collections::BTreeSet::new();
            for range in ranges {
                anyhow::ensure!(
                    *range.start() < count,
                    "--ranks {spec}: rank {} is past the {count} process(es) this run starts \
                     (--ranks-count {count}); ranks count from 0",
                    range.start()
                );
                ranks.extend(*range.start()..=(*range.end()).min(count - 1));
            }
            ranks.into_iter().collect()
        }
        _ => anyhow::bail!(
            "--ranks {spec}: `run` starts the processes itself, so list the ranks to debug \
             (0, 0,2, 1-3) or say all"
        ),
    };
    anyhow::ensure!(!ranks.is_empty(), "--ranks {spec} selects no rank");
    Ok(ranks)
}

/// Each debugged rank's route: its debug port on the target (the range's start + rank)
/// and the VS Code port on this machine its connection is handed to.
pub(super) fn routes(
    ranks: &[u32],
    vscode_ports: impl Iterator<Item = u16>,
    port_range: PortRange,
    shares_this_network: bool,
) -> anyhow::Result<Vec<Route>> {
    ranks
        .iter()
        .zip(vscode_ports)
        .map(|(&rank, vscode_port)| {
            let debug_port = u16::try_from(rank)
                .ok()
                .and_then(|r| port_range.start.checked_add(r))
                .filter(|port| port_range.contains(*port))
                .with_context(|| {
                    format!(
                        "rank {rank} has no port in --port-range {port_range}: the agent \
                         gives rank r the port start + r, so widen the range"
                    )
                })?;
            anyhow::ensure!(
                !shares_this_network || !port_range.contains(vscode_port),
                "VS Code port {vscode_port} is inside the debug port range {port_range}: \
                 both listen on this machine, so pick a --vscode-port or a --port-range \
                 that do not overlap"
            );
            Ok(Route {
                rank,
                debug_port,
                vscode_port,
            })
        })
        .collect()
}

/// A free block of debug ports for ranks 0..=`last_rank`: the agent gives rank r the
/// range's start + r. Probed on this machine when the target shares its network.
pub(super) fn free_debug_ports(last_rank: u32, probe_here: bool) -> anyhow::Result<PortRange> {
    let size = u16::try_from(last_rank)
        .ok()
        .filter(|n| *n < DEBUG_PORTS_TO - DEBUG_PORTS_FROM)
        .context("too many ranks for one block of debug ports")?;
    let span = DEBUG_PORTS_TO - DEBUG_PORTS_FROM - size;
    for _ in 0..DEBUG_PORT_TRIES {
        let start = DEBUG_PORTS_FROM + rand::random_range(0..span);
        let range = PortRange {
            start,
            end: start + size,
        };
        let free = !probe_here
            || (range.start..=range.end)
                .all(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
        if free {
            return Ok(range);
        }
    }
    anyhow::bail!(
        "found no {} free debug port(s) in {DEBUG_PORTS_FROM}-{DEBUG_PORTS_TO} after \
         {DEBUG_PORT_TRIES} tries; give one with --port-range",
        size + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugged_ranks_are_explicit_or_all_and_within_the_processes() {
        type Want = Result<Vec<u32>, &'static str>;
        let cases: [(&str, u32, Want); 8] = [
            ("0", 1, Ok(vec![0])),
            ("all", 4, Ok(vec![0, 1, 2, 3])),
            ("0,2", 4, Ok(vec![0, 2])),
            ("1-9", 4, Ok(vec![1, 2, 3])),
            ("3", 2, Err("rank 3 is past the 2 process(es)")),
            ("master", 4, Err("list the ranks to debug")),
            ("local0", 4, Err("list the ranks to debug")),
            ("x", 4, Err("--ranks \"x\"")),
        ];
        for (spec, count, want) in cases {
            let got = debugged_ranks(spec, count).map_err(|e| format!("{e:#}"));
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{spec}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{spec}: {got}"),
                (got, want) => panic!("{spec}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn a_free_block_of_debug_ports_covers_every_rank() {
        let range = free_debug_ports(3, true).expect("a free block");
        assert_eq!(range.end - range.start, 3);
        assert!(range.start >= DEBUG_PORTS_FROM && range.end < DEBUG_PORTS_TO);
    }

    /// Rank r gets the range's start + r, or an error naming the range; a VS Code port
    /// inside the range is refused only when both listen on this machine.
    #[test]
    fn each_rank_is_routed_to_its_debug_port_and_vscode_port() {
        let range = PortRange {
            start: 6000,
            end: 6003,
        };
        let routed = routes(&[0, 3], [7000, 7001].into_iter(), range, true).expect("routes");
        let got: Vec<(u32, u16, u16)> = routed
            .iter()
            .map(|r| (r.rank, r.debug_port, r.vscode_port))
            .collect();
        assert_eq!(got, [(0, 6000, 7000), (3, 6003, 7001)]);
        let err = routes(&[4], [7000].into_iter(), range, true).expect_err("past the range");
        assert!(format!("{err:#}").contains("rank 4 has no port in --port-range 6000-6003"));
        let err = routes(&[0], [6002].into_iter(), range, true).expect_err("overlap");
        assert!(
            format!("{err:#}").contains("VS Code port 6002 is inside"),
            "{err:#}"
        );
        let elsewhere = routes(&[0], [6002].into_iter(), range, false).expect("another host");
        assert_eq!(elsewhere.len(), 1);
    }
}
