//! Nodes on which the shared tree is not mounted: a node marks itself in
//! its load report and names the mark when it refuses a job for its
//! working directory; both land in the shared state, and placement passes
//! over such a node for jobs under the mark until it is cleared.

use std::collections::HashSet;

use mexec_common::nodes::NodeAddr;

use super::shared_state::StateData;

/// `exclude` plus the nodes whose mark covers `cwd`, unless that would
/// leave no node at all (then the marked ones are tried last, as before).
pub fn exclude(
    nodes: &[NodeAddr],
    data: &StateData,
    exclude: &HashSet<usize>,
    cwd: &[u8],
) -> HashSet<usize> {
    let marked = nodes.iter().enumerate().filter(|(_, addr)| {
        data.nodes
            .get(&addr.authority())
            .is_some_and(|n| mexec_common::unmounted::under(cwd, &n.unmounted))
    });
    let mut all = exclude.clone();
    all.extend(marked.map(|(i, _)| i));
    if all.len() >= nodes.len() {
        return exclude.clone();
    }
    all
}
