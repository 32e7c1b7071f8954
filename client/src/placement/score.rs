//! Scoring nodes: how busy each looks per slot, counting our own clients'
//! jobs (known at once, from the shared state) and everyone else's (from
//! the node's last load report).

use rand::seq::SliceRandom;
use rand::Rng;

/// What a client knows of one node when it places a job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeView {
    /// Slots of the node (reported, else configured, else a guess).
    pub slots: u32,
    /// Jobs this user's clients on this host run or hold there now.
    pub ours: u32,
    /// Jobs of other clients there, from the last fresh report.
    pub others: f64,
    /// Load that is not mexec's (a desktop user's work).
    pub foreign: f64,
    /// Unreachable lately, or draining: tried only after every other node.
    pub avoid: bool,
}

impl NodeView {
    /// Busy-ness per slot; lower is better.
    pub fn score(&self) -> f64 {
        (f64::from(self.ours) + self.others + self.foreign) / f64::from(self.slots.max(1))
    }

    /// Whether a job sent now would start at once rather than queue.
    pub fn has_free_slot(&self) -> bool {
        f64::from(self.ours) + self.others < f64::from(self.slots)
    }
}

/// Indices of `views` from best to worst. Nodes to avoid go last; a node
/// with a free slot goes before any without (a free slot is never left idle
/// for a shorter queue elsewhere: foreign load only orders the free nodes);
/// equal scores come in random order, so clients that start together and
/// see the same state do not all pick the same node.
pub fn rank(views: &[NodeView], rng: &mut impl Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..views.len()).collect();
    order.shuffle(rng);
    order.sort_by(|&a, &b| {
        let (va, vb) = (&views[a], &views[b]);
        va.avoid
            .cmp(&vb.avoid)
            .then(vb.has_free_slot().cmp(&va.has_free_slot()))
            .then(va.score().total_cmp(&vb.score()))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn view(slots: u32, ours: u32) -> NodeView {
        NodeView {
            slots,
            ours,
            others: 0.0,
            foreign: 0.0,
            avoid: false,
        }
    }

    #[test]
    fn least_busy_per_slot_comes_first_and_avoided_nodes_last() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let views = [
            view(4, 3),
            view(8, 3),
            NodeView {
                avoid: true,
                ..view(8, 0)
            },
            NodeView {
                foreign: 2.0,
                ..view(4, 0)
            },
        ];
        assert_eq!(rank(&views, &mut rng), vec![1, 3, 0, 2]);
    }

    #[test]
    fn a_free_slot_beats_a_lower_score_without_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // The big node is full (4 of 4) but scores lower than the small
        // node, whose one slot is free but carries foreign load.
        let views = [
            view(4, 4),
            NodeView {
                foreign: 3.0,
                ..view(1, 0)
            },
        ];
        assert!(views[0].score() < views[1].score());
        assert_eq!(rank(&views, &mut rng), vec![1, 0]);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let views = [view(4, 0), view(4, 0), view(4, 0)];
        let mut firsts = [0; 3];
        for _ in 0..300 {
            firsts[rank(&views, &mut rng)[0]] += 1;
        }
        assert!(firsts.iter().all(|n| *n > 50), "{firsts:?}");
    }
}
