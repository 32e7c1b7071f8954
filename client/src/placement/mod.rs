//! Choosing a node: rank by live load per slot, reserve the choice in the
//! state shared by this user's clients, and keep that state fresh.
//!
//! Layout:
//! - `score`: the ranking itself, a pure function.
//! - `shared_state`: the locked state file client processes share.
//! - `unmounted`: nodes on which the shared tree is not mounted.

pub mod score;
pub mod shared_state;
mod unmounted;

use std::collections::HashSet;

use mexec_common::nodes::NodeAddr;
use mexec_proto::v1::{LoadReport, ToolchainFingerprint};

use score::NodeView;
pub use shared_state::SharedState;
use shared_state::{
    KnownToolchain, NodeState, Snapshot, DOWN_FOR_MS, REFRESH_AFTER_MS, REPORT_TTL_MS,
};

/// Slots assumed for a node nobody has reported on or configured.
const GUESSED_SLOTS: u32 = 4;

/// How a client picks among the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The least busy per slot, counting every client's jobs (the default).
    #[default]
    LeastLoaded,
    /// Any node, at random (for comparison in benchmarks).
    Random,
    /// The next node in list order, shared by all clients (what distcc's
    /// host list amounts to; for comparison in benchmarks).
    RoundRobin,
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "load" | "least-loaded" => Ok(Policy::LeastLoaded),
            "random" => Ok(Policy::Random),
            "round-robin" => Ok(Policy::RoundRobin),
            other => Err(format!(
                "unknown placement `{other}` (use load, random or round-robin)"
            )),
        }
    }
}

/// A node chosen for a job, reserved until `release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Index into the node list.
    pub index: usize,
    /// Nodes whose load report is stale and that this client should fetch.
    pub refresh: Vec<usize>,
}

/// Placement over a fixed node list.
#[derive(Debug)]
pub struct Placement {
    nodes: Vec<NodeAddr>,
    state: SharedState,
    pid: u32,
    policy: Policy,
}

impl Placement {
    pub fn new(nodes: Vec<NodeAddr>, state: SharedState) -> Self {
        Placement {
            nodes,
            state,
            pid: crate::job_hooks::holder(),
            policy: Policy::default(),
        }
    }

    /// Uses `policy` instead of least-loaded.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The node list.
    pub fn nodes(&self) -> &[NodeAddr] {
        &self.nodes
    }

    /// Picks the best node not in `exclude` and reserves it. Without a
    /// usable state file, placement still works, from a random order.
    pub fn choose(&self, exclude: &HashSet<usize>) -> Option<Choice> {
        self.choose_for(exclude, None, &[])
    }

    /// Like `choose`, for a job whose compiler fingerprints as `ours`, in
    /// `cwd`: nodes whose last report (still fresh) has another fingerprint
    /// of that program are not chosen, and nodes marked as not having `cwd`
    /// mounted come last, tried only when every other node was.
    pub fn choose_for(
        &self,
        exclude: &HashSet<usize>,
        ours: Option<&ToolchainFingerprint>,
        cwd: &[u8],
    ) -> Option<Choice> {
        let pid = self.pid;
        let result = self.state.update(|data, now| {
            let exclude = &unmounted::exclude(&self.nodes, data, exclude, cwd);
            let views: Vec<NodeView> = self
                .nodes
                .iter()
                .map(|addr| view(addr, data.nodes.get(&addr.authority()), now))
                .collect();
            let order = match self.policy {
                Policy::LeastLoaded => score::rank(&views, &mut rand::rng()),
                Policy::Random => {
                    let mut order: Vec<usize> = (0..views.len()).collect();
                    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
                    order
                }
                Policy::RoundRobin => {
                    let start = data.round_robin % views.len().max(1);
                    data.round_robin = data.round_robin.wrapping_add(1);
                    (0..views.len())
                        .map(|i| (start + i) % views.len())
                        .collect()
                }
            };
            let index = order.into_iter().find(|&i| {
                !exclude.contains(&i)
                    && ours.is_none_or(|ours| {
                        known_mismatch(
                            &self.nodes[i],
                            data.nodes.get(&self.nodes[i].authority()),
                            ours,
                            now,
                        )
                        .is_none()
                    })
            })?;
            let refresh = self.claim_refresh(data, now);
            let chosen = data.nodes.entry(self.nodes[index].authority()).or_default();
            chosen.reservations.push(pid);
            Some(Choice { index, refresh })
        });
        match result {
            Ok(choice) => choice,
            Err(_) => {
                let views: Vec<NodeView> = self.nodes.iter().map(|a| view(a, None, 0)).collect();
                let index = score::rank(&views, &mut rand::rng())
                    .into_iter()
                    .find(|i| !exclude.contains(i))?;
                Some(Choice {
                    index,
                    refresh: Vec::new(),
                })
            }
        }
    }

    /// Claims the refresh of the nodes whose report is stale and that no
    /// one is fetching; returns them.
    pub fn claim_stale(&self) -> Vec<usize> {
        self.state
            .update(|data, now| self.claim_refresh(data, now))
            .unwrap_or_default()
    }

    fn claim_refresh(&self, data: &mut shared_state::StateData, now: u64) -> Vec<usize> {
        let mut refresh = Vec::new();
        for (i, addr) in self.nodes.iter().enumerate() {
            let node = data.nodes.entry(addr.authority()).or_default();
            node.touched_ms = now;
            let age = node
                .report
                .map(|r| now.saturating_sub(r.at_ms))
                .unwrap_or(u64::MAX);
            let claimed = now.saturating_sub(node.refresh_claimed_ms) < REFRESH_AFTER_MS;
            if age > REFRESH_AFTER_MS && !claimed && node.down_until_ms <= now {
                node.refresh_claimed_ms = now;
                refresh.push(i);
            }
        }
        refresh
    }

    /// Whether a job sent now to any node not in `exclude` would wait in
    /// that node's queue, while some node could take it later: then the
    /// agent holds the job until a slot frees, instead of committing it to
    /// one node's queue. Only the agent, whose state counts every job it
    /// runs, holds jobs; a plain client never does.
    pub fn every_node_full(&self, exclude: &HashSet<usize>) -> bool {
        if !self.state.in_memory() {
            return false;
        }
        self.state
            .update(|data, now| {
                let views = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !exclude.contains(i))
                    .map(|(_, addr)| view(addr, data.nodes.get(&addr.authority()), now));
                let mut usable = views.filter(|v| !v.avoid).peekable();
                usable.peek().is_some() && usable.all(|v| !v.has_free_slot())
            })
            .unwrap_or(false)
    }

    /// Nodes whose slots nobody knows yet (no report, none configured, not
    /// down): the agent asks them before placing, rather than guess.
    pub fn unknown_nodes(&self) -> Vec<usize> {
        if !self.state.in_memory() {
            return Vec::new();
        }
        self.state
            .update(|data, now| {
                self.nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, addr)| addr.slots.is_none())
                    .filter(|(_, addr)| {
                        data.nodes
                            .get(&addr.authority())
                            .is_none_or(|node| node.report.is_none() && node.down_until_ms <= now)
                    })
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Gives back the reservation on node `index`.
    pub fn release(&self, index: usize) {
        let pid = self.pid;
        let key = self.nodes[index].authority();
        let _ = self.state.update(|data, _| {
            if let Some(node) = data.nodes.get_mut(&key) {
                if let Some(at) = node.reservations.iter().position(|p| *p == pid) {
                    node.reservations.swap_remove(at);
                }
            }
        });
        SharedState::slot_freed();
    }

    /// Marks the node at `authority` as not having the shared tree under
    /// `top` mounted, until its next load report says otherwise.
    pub fn mark_unmounted(state: &SharedState, authority: &str, top: &str) {
        let _ = state.update(|data, now| {
            let node = data.nodes.entry(authority.to_owned()).or_default();
            node.unmounted = top.to_owned();
            node.touched_ms = now;
        });
    }

    /// Marks node `index` unreachable for a while, so other clients skip it.
    pub fn mark_down(&self, index: usize) {
        let key = self.nodes[index].authority();
        let _ = self.state.update(|data, now| {
            let node = data.nodes.entry(key).or_default();
            node.down_until_ms = now + DOWN_FOR_MS;
            node.touched_ms = now;
        });
    }

    /// Stores a fresh load report of node `index`.
    pub fn record(&self, index: usize, report: &LoadReport) {
        let key = self.nodes[index].authority();
        let _ = self.state.update(|data, now| {
            let node = data.nodes.entry(key).or_default();
            node.down_until_ms = 0;
            node.touched_ms = now;
            node.unmounted.clone_from(&report.unmounted);
            node.report = Some(Snapshot {
                slots: report.slots,
                running: report.running,
                queued: report.queued,
                foreign_load: report.foreign_load,
                draining: report.draining,
                offered: report
                    .desktop
                    .then(|| mexec_common::load_query::offered_slots(report)),
                at_ms: now,
                ours_then: node.reservations.len() as u32,
            });
            node.name = report.node.clone();
            node.toolchains = report.toolchains.iter().map(KnownToolchain::from).collect();
        });
        SharedState::slot_freed();
    }

    /// The nodes whose fresh report shows another compiler than `ours`,
    /// said as the line a person reads (for when no node is left).
    pub fn known_mismatches(&self, ours: &ToolchainFingerprint) -> Vec<String> {
        self.state
            .update(|data, now| {
                self.nodes
                    .iter()
                    .filter_map(|addr| {
                        known_mismatch(addr, data.nodes.get(&addr.authority()), ours, now)
                    })
                    .map(|m| m.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How `addr`'s compiler differs from `ours`, by its last report while
/// that is fresh; `None` when it is the same or not known.
fn known_mismatch(
    addr: &NodeAddr,
    state: Option<&NodeState>,
    ours: &ToolchainFingerprint,
    now: u64,
) -> Option<mexec_common::toolchain::Mismatch> {
    let state = state?;
    let fresh = state
        .report
        .is_some_and(|r| now.saturating_sub(r.at_ms) < REPORT_TTL_MS);
    if !fresh {
        return None;
    }
    let reported: Vec<ToolchainFingerprint> = state
        .toolchains
        .iter()
        .filter(|t| t.program == ours.program)
        .map(ToolchainFingerprint::from)
        .collect();
    let name = if state.name.is_empty() {
        addr.authority()
    } else {
        state.name.clone()
    };
    mexec_common::toolchain::mismatch(&name, &reported, ours)
}

fn view(addr: &NodeAddr, state: Option<&NodeState>, now: u64) -> NodeView {
    let ours = state.map(|s| s.reservations.len() as u32).unwrap_or(0);
    let fresh = state
        .and_then(|s| s.report)
        .filter(|r| now.saturating_sub(r.at_ms) < REPORT_TTL_MS);
    // A desktop offering some of its slots counts as that many; one that
    // offers none (its owner needs it) is tried only after every other node.
    let offered = fresh.and_then(|r| r.offered);
    let slots = offered
        .filter(|s| *s > 0)
        .or(fresh.map(|r| r.slots))
        .filter(|s| *s > 0)
        .or(addr.slots)
        .unwrap_or(GUESSED_SLOTS);
    let (others, foreign, draining) = match fresh {
        Some(r) => (
            f64::from((r.running + r.queued).saturating_sub(r.ours_then)),
            r.foreign_load,
            r.draining,
        ),
        None => (0.0, 0.0, false),
    };
    let down = state.is_some_and(|s| s.down_until_ms > now);
    NodeView {
        slots,
        ours,
        others,
        foreign,
        avoid: down || draining || offered == Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(dir: &std::path::Path, nodes: &str) -> Placement {
        Placement::new(
            mexec_common::nodes::parse_node_list(nodes).unwrap(),
            SharedState::at(dir.join("placement.json")),
        )
    }

    #[test]
    fn reservations_spread_jobs_over_nodes_by_slots() {
        let dir = tempfile::tempdir().unwrap();
        // Many "clients" share this pid here; reservations still count.
        let p = placement(dir.path(), "a:1/4,b:2/4,c:3/8");
        let mut counts = [0; 3];
        for _ in 0..16 {
            counts[p.choose(&HashSet::new()).unwrap().index] += 1;
        }
        assert_eq!(counts, [4, 4, 8]);
        for i in 0..3 {
            p.release(i);
        }
    }

    #[test]
    fn down_nodes_and_excluded_nodes_come_last_or_never() {
        let dir = tempfile::tempdir().unwrap();
        let p = placement(dir.path(), "a:1,b:2");
        p.mark_down(0);
        assert_eq!(p.choose(&HashSet::new()).unwrap().index, 1);
        p.release(1);
        assert_eq!(p.choose(&HashSet::from([1])).unwrap().index, 0);
        assert!(p.choose(&HashSet::from([0, 1])).is_none());
    }

    #[test]
    fn stale_reports_are_claimed_for_refresh_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = placement(dir.path(), "a:1,b:2");
        let first = p.choose(&HashSet::new()).unwrap();
        assert_eq!(first.refresh, vec![0, 1]);
        let second = p.choose(&HashSet::new()).unwrap();
        assert!(second.refresh.is_empty());
        p.record(
            0,
            &LoadReport {
                slots: 2,
                running: 2,
                ..LoadReport::default()
            },
        );
        p.record(
            1,
            &LoadReport {
                slots: 2,
                ..LoadReport::default()
            },
        );
        // Node a reports both its slots busy, one of them by our own
        // reservation; b reports only ours. The next job goes to b.
        assert_eq!(p.choose(&HashSet::new()).unwrap().index, 1);
    }

    #[test]
    fn a_desktop_counts_its_offered_slots_and_one_offering_none_goes_last() {
        let dir = tempfile::tempdir().unwrap();
        let p = placement(dir.path(), "a:1,b:2");
        let desk = |offered| LoadReport {
            slots: 8,
            desktop: true,
            offered_slots: offered,
            ..LoadReport::default()
        };
        p.record(0, &desk(0));
        p.record(
            1,
            &LoadReport {
                slots: 1,
                running: 1,
                ..LoadReport::default()
            },
        );
        // b is full and a is free but its owner needs it: b still first.
        assert_eq!(p.choose(&HashSet::new()).unwrap().index, 1);
        p.release(1);
        p.record(0, &desk(8));
        assert_eq!(p.choose(&HashSet::new()).unwrap().index, 0);
    }
}

#[cfg(test)]
mod toolchain_tests {
    use super::*;

    fn gcc(digest: &str) -> ToolchainFingerprint {
        ToolchainFingerprint {
            program: "gcc".into(),
            digest: digest.into(),
            version: "12.2.0".into(),
            target: "x86_64-linux-gnu".into(),
            driver: "/usr/bin/gcc".into(),
        }
    }

    #[test]
    fn a_node_reported_with_another_compiler_is_not_chosen_for_a_compile() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = mexec_common::nodes::parse_node_list("127.0.0.1:1,127.0.0.1:2").unwrap();
        let placement = Placement::new(nodes, SharedState::at(dir.path().join("placement.json")));
        let report = |name: &str, digest: &str| LoadReport {
            node: name.into(),
            slots: 4,
            toolchains: vec![gcc(digest)],
            ..LoadReport::default()
        };
        placement.record(0, &report("odd", "bbbb"));
        placement.record(1, &report("good", "aaaa"));
        let ours = gcc("aaaa");
        for _ in 0..10 {
            let choice = placement
                .choose_for(&HashSet::new(), Some(&ours), &[])
                .unwrap();
            assert_eq!(choice.index, 1);
            placement.release(choice.index);
        }
        // With the good node excluded, none is left, and the reason is known.
        let only_good = HashSet::from([1]);
        assert!(placement.choose_for(&only_good, Some(&ours), &[]).is_none());
        assert!(
            placement.choose_for(&only_good, None, &[]).is_some(),
            "no check: any node"
        );
        let why = placement.known_mismatches(&ours);
        assert_eq!(why.len(), 1);
        assert!(
            why[0].starts_with("node odd: gcc is 12.2.0 x86_64-linux-gnu bbbb"),
            "{why:?}"
        );
        // The odd node upgraded to ours: chosen again.
        placement.record(0, &report("odd", "aaaa"));
        assert!(placement.choose_for(&only_good, Some(&ours), &[]).is_some());
    }
}
