//! The gatekeeper's picture of the cluster and its decisions: who is a
//! member, which slots are leased, and which waiting request gets the next
//! free slot. Plain data behind one lock; no I/O, so tests drive it directly.
//!
//! Fairness: the next free slot goes to the waiting request of the user who
//! has used the least slot time lately (leases running now count with the
//! time they have run; finished ones with their duration, halved every
//! `USAGE_HALF_LIFE`); within that user, of the build that has used the
//! least; within that build, the oldest. With K users all busy, each holds
//! about 1/K of the slots. A user who arrives with a small build has used
//! nothing lately, so the next free slots go to it until it has had its
//! share: the small build is not stuck behind the large builds' backlog.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mexec_proto::v1::{LeasedJob, LoadReport, Member, NodeStatus, UserStatus};
use tokio::sync::oneshot;

/// How often executors report their load at the least: the interval the
/// gatekeeper asks for when a node joins.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Reports a node may miss (a lost packet, a busy moment) before it is
/// taken for gone.
const MISSED_REPORTS: u32 = 6;
/// A node that sends nothing for this long is dropped.
pub const SILENCE_LIMIT: Duration = HEARTBEAT.saturating_mul(MISSED_REPORTS);

/// How fast past slot use is forgiven, unless configured.
pub const USAGE_HALF_LIFE: Duration = Duration::from_secs(2);
/// Each running lease also counts this many slot-seconds, so grants made in
/// the same instant alternate between users.
const RUNNING_WEIGHT: f64 = 0.05;

/// Slot-seconds used, decaying with `USAGE_HALF_LIFE`.
#[derive(Debug, Clone, Copy)]
struct Usage {
    value: f64,
    at: Instant,
}

impl Usage {
    fn at(&self, now: Instant, half_life: Duration) -> f64 {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        self.value * 0.5f64.powf(age / half_life.as_secs_f64().max(1e-3))
    }

    fn add(&mut self, now: Instant, half_life: Duration, slot_seconds: f64) {
        self.value = self.at(now, half_life) + slot_seconds;
        self.at = now;
    }
}

/// The leases one user (or build) holds now, summed as leases start and
/// end, so that choosing the next grant does not add up every lease.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    count: u32,
    /// The leases' start times, in seconds since the cluster's epoch.
    since_sum: f64,
}

impl Held {
    fn add(&mut self, since: f64) {
        self.count += 1;
        self.since_sum += since;
    }

    /// Takes a lease off; `true` when none is left (then the entry goes,
    /// and with it any rounding the sums gathered).
    fn remove(&mut self, since: f64) -> bool {
        self.count = self.count.saturating_sub(1);
        self.since_sum -= since;
        self.count == 0
    }

    /// Slot-seconds held until `now`, and `RUNNING_WEIGHT` per lease.
    fn at(&self, now: f64) -> f64 {
        f64::from(self.count) * (now + RUNNING_WEIGHT) - self.since_sum
    }
}

/// Identifies one `Join` stream, so the end of an old stream does not remove
/// a node that has registered again on a new one.
pub type ConnId = u64;

/// Where a node is reached from: clients use the address it advertises; the
/// gatekeeper, inside the cluster, uses the one its stream came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub clients: String,
    pub gatekeeper: String,
}

impl Reach {
    /// The same address for everyone.
    pub fn same(address: &str) -> Reach {
        Reach {
            clients: address.to_owned(),
            gatekeeper: address.to_owned(),
        }
    }

    /// The host the node registered from: where we reach it.
    pub fn registered_from(&self) -> Option<IpAddr> {
        self.gatekeeper
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip().to_canonical())
    }
}

/// A member of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub reach: Reach,
    pub conn: ConnId,
    pub report: LoadReport,
    pub last_report: Instant,
    /// Slots leased through the gatekeeper on this node.
    pub leased: u32,
}

impl Node {
    /// Slots in use as far as we know: our leases, or the node's own count
    /// when it is higher (clients placing directly, or leases granted before
    /// a gatekeeper restart).
    fn busy(&self) -> u32 {
        self.leased.max(self.report.running + self.report.queued)
    }

    /// The slots the node offers now: fewer than it has on a desktop whose
    /// owner is busy, none while the owner needs the whole machine.
    fn offered(&self) -> u32 {
        mexec_common::load_query::offered_slots(&self.report)
    }

    fn has_free_slot(&self) -> bool {
        !self.report.draining && self.busy() < self.offered()
    }

    /// Lower is better: busy slots plus load that is not ours, per offered
    /// slot.
    fn score(&self) -> f64 {
        (f64::from(self.busy()) + self.report.foreign_load) / f64::from(self.offered().max(1))
    }
}

/// What a waiting request is for.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub user: String,
    pub build_id: String,
    pub job_id: String,
    pub program: String,
    pub avoid: HashSet<String>,
    pub relayed: bool,
    /// What its node must have.
    pub needs: super::fit::Needs,
    /// The job's working directory: nodes that marked it not mounted
    /// (`LoadReport.unmounted`) are avoided.
    pub cwd: Vec<u8>,
}

/// A live member's name, asked for from another host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Where the member registered from.
    pub held: IpAddr,
    /// Where the new registration comes from.
    pub from: IpAddr,
}

/// A granted slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub lease_id: u64,
    pub node: String,
    pub reach: Reach,
}

struct Waiting {
    id: u64,
    wanted: Wanted,
    since: Instant,
    grant: oneshot::Sender<Grant>,
}

struct Lease {
    wanted: Wanted,
    node: String,
    since_unix_ms: u64,
    since: Instant,
    /// `since` in seconds since the cluster's epoch (for `Held`).
    since_s: f64,
}

/// Limits on the queue and on users.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// The most requests that may wait.
    pub max_queued: u32,
    /// The most leases one user may hold; 0 means no limit.
    pub default_user_limit: u32,
    /// Per-user overrides of the default.
    pub user_limits: HashMap<String, u32>,
    /// How fast past slot use is forgiven (`USAGE_HALF_LIFE` when zero).
    pub usage_half_life: Duration,
}

impl Limits {
    fn half_life(&self) -> Duration {
        if self.usage_half_life.is_zero() {
            USAGE_HALF_LIFE
        } else {
            self.usage_half_life
        }
    }

    fn for_user(&self, user: &str) -> u32 {
        self.user_limits
            .get(user)
            .copied()
            .unwrap_or(self.default_user_limit)
    }
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub queued: u32,
}

/// The whole picture.
pub struct Cluster {
    nodes: BTreeMap<String, Node>,
    waiting: Vec<Waiting>,
    leases: HashMap<u64, Lease>,
    next_id: u64,
    limits: Limits,
    user_usage: HashMap<String, Usage>,
    build_usage: HashMap<(String, String), Usage>,
    /// What the leases running now add up to, per user and per build.
    user_held: HashMap<String, Held>,
    build_held: HashMap<(String, String), Held>,
    /// Where lease times are counted from.
    epoch: Instant,
    /// When decayed usage was last forgotten.
    pruned: Instant,
}

/// How often decayed usage is forgotten: a pass over every user and build,
/// too much for every release.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes.len())
            .field("waiting", &self.waiting.len())
            .field("leases", &self.leases.len())
            .finish()
    }
}

impl Cluster {
    pub fn new(limits: Limits) -> Self {
        Cluster {
            nodes: BTreeMap::new(),
            waiting: Vec::new(),
            leases: HashMap::new(),
            next_id: 1,
            limits,
            user_usage: HashMap::new(),
            build_usage: HashMap::new(),
            user_held: HashMap::new(),
            build_held: HashMap::new(),
            epoch: Instant::now(),
            pruned: Instant::now(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A new `Join` stream's id.
    pub fn new_conn(&mut self) -> ConnId {
        self.id()
    }

    /// The live member called `name` when it registered from another
    /// host than `reach` says: its name is not free to take.
    pub fn held_elsewhere(&self, name: &str, reach: &Reach) -> Option<Taken> {
        let holder = self.nodes.get(name)?;
        let (held, from) = (holder.reach.registered_from()?, reach.registered_from()?);
        (held != from).then_some(Taken { held, from })
    }

    /// A node registers (again); leases on its old entry are kept. A live
    /// member's name registered from another host is refused: a restart
    /// comes from the same host, a takeover from another.
    pub fn join(
        &mut self,
        name: &str,
        reach: Reach,
        conn: ConnId,
        report: LoadReport,
    ) -> Result<(), Taken> {
        if let Some(taken) = self.held_elsewhere(name, &reach) {
            return Err(taken);
        }
        let leased = self.leases.values().filter(|l| l.node == name).count() as u32;
        self.nodes.insert(
            name.to_owned(),
            Node {
                name: name.to_owned(),
                reach,
                conn,
                report,
                last_report: Instant::now(),
                leased,
            },
        );
        self.dispatch();
        Ok(())
    }

    /// A load report on stream `conn` from a node reachable at `reach`.
    /// A node dropped for silence whose stream still works (it was frozen,
    /// then thawed) comes back with its next report.
    pub fn report(
        &mut self,
        name: &str,
        reach: &Reach,
        conn: ConnId,
        report: LoadReport,
    ) -> Result<(), Taken> {
        match self.nodes.get_mut(name) {
            Some(node) if node.conn == conn => {
                node.report = report;
                node.last_report = Instant::now();
            }
            // Replaced by a newer registration: this stream is stale.
            Some(_) => return Ok(()),
            None => return self.join(name, reach.clone(), conn, report),
        }
        self.dispatch();
        Ok(())
    }

    /// Stream `conn` of node `name` ended.
    pub fn leave(&mut self, name: &str, conn: ConnId) -> bool {
        let gone = self.nodes.get(name).is_some_and(|n| n.conn == conn);
        if gone {
            self.nodes.remove(name);
        }
        gone
    }

    /// Drops nodes silent for longer than `SILENCE_LIMIT`; returns their names.
    pub fn expire_silent(&mut self, now: Instant) -> Vec<String> {
        let silent: Vec<String> = self
            .nodes
            .values()
            .filter(|n| now.saturating_duration_since(n.last_report) > SILENCE_LIMIT)
            .map(|n| n.name.clone())
            .collect();
        for name in &silent {
            self.nodes.remove(name);
        }
        silent
    }

    /// Why no member may take `wanted`, when none may (and there are
    /// members): it lacks what it requires, or a different compiler.
    pub fn unplaceable(&self, wanted: &Wanted) -> Option<tonic::Status> {
        wanted
            .needs
            .refusal(self.nodes.values().map(|n| (n.name.as_str(), &n.report)))
    }

    /// Queues a request; the grant arrives on the receiver.
    pub fn enqueue(
        &mut self,
        wanted: Wanted,
    ) -> Result<(u64, oneshot::Receiver<Grant>), QueueFull> {
        self.waiting.retain(|w| !w.grant.is_closed());
        if self.waiting.len() as u32 >= self.limits.max_queued {
            return Err(QueueFull {
                queued: self.waiting.len() as u32,
            });
        }
        let (tx, rx) = oneshot::channel();
        let id = self.id();
        self.waiting.push(Waiting {
            id,
            wanted,
            since: Instant::now(),
            grant: tx,
        });
        self.dispatch();
        Ok((id, rx))
    }

    /// Forgets a waiting request whose client left.
    pub fn cancel(&mut self, id: u64) {
        self.waiting.retain(|w| w.id != id);
    }

    /// Ends a lease and hands its slot on.
    pub fn release(&mut self, lease_id: u64) {
        if let Some(lease) = self.leases.remove(&lease_id) {
            if let Some(node) = self.nodes.get_mut(&lease.node) {
                node.leased = node.leased.saturating_sub(1);
            }
            self.stop_holding(&lease);
            let now = Instant::now();
            let half_life = self.limits.half_life();
            let used = now.saturating_duration_since(lease.since).as_secs_f64();
            let fresh = Usage {
                value: 0.0,
                at: now,
            };
            self.user_usage
                .entry(lease.wanted.user.clone())
                .or_insert(fresh)
                .add(now, half_life, used);
            self.build_usage
                .entry((lease.wanted.user, lease.wanted.build_id))
                .or_insert(fresh)
                .add(now, half_life, used);
            // Forget users whose use has decayed to nothing (a forgotten
            // one counts as none, as it would have a moment later).
            if now.saturating_duration_since(self.pruned) >= PRUNE_EVERY {
                self.pruned = now;
                self.user_usage.retain(|_, u| u.at(now, half_life) > 1e-3);
                self.build_usage.retain(|_, u| u.at(now, half_life) > 1e-3);
            }
        }
        self.dispatch();
    }

    /// Grants free slots to waiting requests, fairest first.
    pub fn dispatch(&mut self) {
        self.waiting.retain(|w| !w.grant.is_closed());
        let mut skipped: HashSet<u64> = HashSet::new();
        while self.nodes.values().any(Node::has_free_slot) {
            let Some(index) = self.next_fair(&skipped) else {
                return;
            };
            let Some(node) = self.best_node(&self.waiting[index].wanted) else {
                // Every free slot is on a node this request avoids.
                skipped.insert(self.waiting[index].id);
                continue;
            };
            let waiting = self.waiting.swap_remove(index);
            let lease_id = self.id();
            let node = self.nodes.get_mut(&node).expect("best_node names a member");
            let grant = Grant {
                lease_id,
                node: node.name.clone(),
                reach: node.reach.clone(),
            };
            if waiting.grant.send(grant).is_ok() {
                node.leased += 1;
                let since = Instant::now();
                let lease = Lease {
                    wanted: waiting.wanted,
                    node: node.name.clone(),
                    since_unix_ms: mexec_common::clock::now_ms(),
                    since,
                    since_s: since.saturating_duration_since(self.epoch).as_secs_f64(),
                };
                self.start_holding(&lease);
                self.leases.insert(lease_id, lease);
            }
        }
    }

    fn start_holding(&mut self, lease: &Lease) {
        let Wanted { user, build_id, .. } = &lease.wanted;
        self.user_held
            .entry(user.clone())
            .or_default()
            .add(lease.since_s);
        self.build_held
            .entry((user.clone(), build_id.clone()))
            .or_default()
            .add(lease.since_s);
    }

    fn stop_holding(&mut self, lease: &Lease) {
        let Wanted { user, build_id, .. } = &lease.wanted;
        if self
            .user_held
            .get_mut(user)
            .is_some_and(|held| held.remove(lease.since_s))
        {
            self.user_held.remove(user);
        }
        let build = (user.clone(), build_id.clone());
        if self
            .build_held
            .get_mut(&build)
            .is_some_and(|held| held.remove(lease.since_s))
        {
            self.build_held.remove(&build);
        }
    }

    /// The waiting request that deserves the next slot.
    fn next_fair(&self, skipped: &HashSet<u64>) -> Option<usize> {
        let now = Instant::now();
        let now_s = now.saturating_duration_since(self.epoch).as_secs_f64();
        let half_life = self.limits.half_life();
        let user_key = |user: &str| {
            self.user_held.get(user).map_or(0.0, |h| h.at(now_s))
                + self
                    .user_usage
                    .get(user)
                    .map_or(0.0, |u| u.at(now, half_life))
        };
        let build_key = |build: &(String, String)| {
            self.build_held.get(build).map_or(0.0, |h| h.at(now_s))
                + self
                    .build_usage
                    .get(build)
                    .map_or(0.0, |u| u.at(now, half_life))
        };
        // Each request's keys once, not once per comparison.
        self.waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| !skipped.contains(&w.id))
            .filter(|(_, w)| {
                let limit = self.limits.for_user(&w.wanted.user);
                let running = self.user_held.get(&w.wanted.user).map_or(0, |h| h.count);
                limit == 0 || running < limit
            })
            .map(|(i, w)| {
                let build = (w.wanted.user.clone(), w.wanted.build_id.clone());
                (i, user_key(&w.wanted.user), build_key(&build), w.since)
            })
            .min_by(|a, b| {
                a.1.total_cmp(&b.1)
                    .then_with(|| a.2.total_cmp(&b.2))
                    .then(a.3.cmp(&b.3))
            })
            .map(|(i, ..)| i)
    }

    fn best_node(&self, wanted: &Wanted) -> Option<String> {
        // Avoiding is a preference: when every member that fits is avoided
        // (a one-node cluster lost a job once), any of them will do.
        let fits = |n: &&Node| wanted.needs.met_by(&n.name, &n.report);
        let avoided = |n: &Node| {
            wanted.avoid.contains(&n.name)
                || mexec_common::unmounted::under(&wanted.cwd, &n.report.unmounted)
        };
        let all_avoided = self.nodes.values().filter(fits).all(avoided);
        self.nodes
            .values()
            .filter(fits)
            .filter(|n| n.has_free_slot() && (all_avoided || !avoided(n)))
            .min_by(|a, b| a.score().total_cmp(&b.score()))
            .map(|n| n.name.clone())
    }

    /// The member list, for clients to cache.
    pub fn members(&self) -> Vec<Member> {
        self.nodes
            .values()
            .map(|n| Member {
                node: n.name.clone(),
                address: n.reach.clients.clone(),
                slots: n.report.slots,
            })
            .collect()
    }

    /// Requests waiting now.
    pub fn queued(&self) -> u32 {
        self.waiting.iter().filter(|w| !w.grant.is_closed()).count() as u32
    }

    /// Everything `ClusterStatus` reports.
    pub fn status(&self) -> (Vec<NodeStatus>, Vec<UserStatus>, Vec<LeasedJob>) {
        let now = Instant::now();
        let nodes = self
            .nodes
            .values()
            .map(|n| NodeStatus {
                load: Some(n.report.clone()),
                address: n.reach.clients.clone(),
                leased: n.leased,
                last_report_ms: now.saturating_duration_since(n.last_report).as_millis() as u64,
            })
            .collect();
        let mut users: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for lease in self.leases.values() {
            users.entry(&lease.wanted.user).or_default().0 += 1;
        }
        for waiting in self.waiting.iter().filter(|w| !w.grant.is_closed()) {
            users.entry(&waiting.wanted.user).or_default().1 += 1;
        }
        let users = users
            .into_iter()
            .map(|(user, (running, queued))| UserStatus {
                user: user.to_owned(),
                running,
                queued,
                limit: self.limits.for_user(user),
            })
            .collect();
        let mut jobs: Vec<LeasedJob> = self
            .leases
            .values()
            .map(|l| LeasedJob {
                job_id: l.wanted.job_id.clone(),
                user: l.wanted.user.clone(),
                build_id: l.wanted.build_id.clone(),
                node: l.node.clone(),
                program: l.wanted.program.clone(),
                since_unix_ms: l.since_unix_ms,
                relayed: l.wanted.relayed,
            })
            .collect();
        jobs.sort_by_key(|j| j.since_unix_ms);
        (nodes, users, jobs)
    }

    /// The configured queue bound.
    pub fn max_queued(&self) -> u32 {
        self.limits.max_queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(slots: u32) -> LoadReport {
        LoadReport {
            slots,
            ..LoadReport::default()
        }
    }

    fn cluster(nodes: &[(&str, u32)]) -> Cluster {
        let mut c = Cluster::new(Limits {
            max_queued: 1000,
            ..Limits::default()
        });
        for (name, slots) in nodes {
            let conn = c.new_conn();
            c.join(
                name,
                Reach::same(&format!("{name}:1")),
                conn,
                report(*slots),
            )
            .unwrap();
        }
        c
    }

    fn want(user: &str, build: &str) -> Wanted {
        Wanted {
            user: user.into(),
            build_id: build.into(),
            ..Wanted::default()
        }
    }

    #[test]
    fn the_sums_kept_as_leases_start_and_end_match_the_leases() {
        let mut c = cluster(&[("a", 3), ("b", 2)]);
        let mut leases = Vec::new();
        let mut receivers = Vec::new();
        for round in 0..40u32 {
            let user = ["u", "v", "w"][round as usize % 3];
            let build = ["1", "2"][round as usize % 2];
            let (_, rx) = c.enqueue(want(user, build)).unwrap();
            receivers.push(rx);
            receivers.retain_mut(|rx| match rx.try_recv() {
                Ok(grant) => {
                    leases.push(grant.lease_id);
                    false
                }
                Err(_) => true,
            });
            if round % 3 == 2 {
                c.release(leases.remove(0));
            }
            let now_s = Instant::now()
                .saturating_duration_since(c.epoch)
                .as_secs_f64();
            for user in ["u", "v", "w"] {
                let from_leases: Vec<&Lease> = c
                    .leases
                    .values()
                    .filter(|l| l.wanted.user == user)
                    .collect();
                let held = c.user_held.get(user).copied().unwrap_or_default();
                assert_eq!(held.count as usize, from_leases.len(), "{user}");
                let summed: f64 = from_leases
                    .iter()
                    .map(|l| now_s - l.since_s + RUNNING_WEIGHT)
                    .sum();
                assert!((held.at(now_s) - summed).abs() < 1e-6, "{user}");
            }
        }
        // Every lease given back: nothing is left held.
        for lease in leases {
            c.release(lease);
        }
        for rx in receivers.iter_mut() {
            if let Ok(grant) = rx.try_recv() {
                c.release(grant.lease_id);
            }
        }
        assert!(c.leases.is_empty() || !c.user_held.is_empty());
        assert_eq!(
            c.user_held
                .values()
                .map(|h| h.count as usize)
                .sum::<usize>(),
            c.leases.len()
        );
    }

    #[test]
    fn grants_go_to_the_least_busy_node_per_slot() {
        let mut c = cluster(&[("big", 4), ("small", 2)]);
        let mut got = Vec::new();
        for _ in 0..6 {
            let (_, mut rx) = c.enqueue(want("u", "b")).unwrap();
            got.push(rx.try_recv().unwrap().node);
        }
        assert_eq!(got.iter().filter(|n| *n == "big").count(), 4);
        assert_eq!(got.iter().filter(|n| *n == "small").count(), 2);
        // Full: the next request waits.
        let (_, mut rx) = c.enqueue(want("u", "b")).unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_user_with_fewest_leases_gets_the_next_slot() {
        let mut c = cluster(&[("n", 2)]);
        let (_, mut a1) = c.enqueue(want("alice", "big")).unwrap();
        let (_, mut a2) = c.enqueue(want("alice", "big")).unwrap();
        let a1 = a1.try_recv().unwrap();
        let _a2 = a2.try_recv().unwrap();
        // Alice has a backlog; Bob arrives later with one job.
        let mut alice_waiting: Vec<_> = (0..5)
            .map(|_| c.enqueue(want("alice", "big")).unwrap().1)
            .collect();
        let (_, mut bob) = c.enqueue(want("bob", "small")).unwrap();
        c.release(a1.lease_id);
        assert!(bob.try_recv().is_ok(), "bob overtakes alice's backlog");
        assert!(alice_waiting.iter_mut().all(|rx| rx.try_recv().is_err()));
    }

    #[test]
    fn recent_use_is_remembered_and_then_forgiven() {
        let mut c = cluster(&[("n", 1)]);
        let (_, mut first) = c.enqueue(want("early", "b")).unwrap();
        let lease = first.try_recv().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        c.release(lease.lease_id);
        // The node is free again; a newcomer waiting alongside the user who
        // just used it goes first.
        let busy = c.enqueue(want("other", "x")).unwrap();
        let mut hold = busy.1;
        let held = hold.try_recv().unwrap();
        let (_, mut again) = c.enqueue(want("early", "b")).unwrap();
        let (_, mut newcomer) = c.enqueue(want("fresh", "y")).unwrap();
        c.release(held.lease_id);
        assert!(newcomer.try_recv().is_ok());
        assert!(again.try_recv().is_err());
        let now = Instant::now();
        let half_life = c.limits.half_life();
        let remembered = c.user_usage["early"].at(now, half_life);
        let later = c.user_usage["early"].at(now + half_life * 10, half_life);
        assert!(remembered > 0.0 && later < remembered / 1000.0);
    }

    #[test]
    fn builds_of_one_user_share_and_limits_hold() {
        let mut c = Cluster::new(Limits {
            max_queued: 10,
            default_user_limit: 0,
            user_limits: HashMap::from([("capped".to_owned(), 1)]),
            ..Limits::default()
        });
        let conn = c.new_conn();
        c.join("n", Reach::same("n:1"), conn, report(4)).unwrap();
        let (_, mut first) = c.enqueue(want("capped", "b1")).unwrap();
        let (_, mut second) = c.enqueue(want("capped", "b1")).unwrap();
        assert!(first.try_recv().is_ok());
        assert!(second.try_recv().is_err(), "over the user's limit of 1");
        let (_, mut other) = c.enqueue(want("free", "x")).unwrap();
        assert!(other.try_recv().is_ok());
        let (users_nodes, users, _) = c.status();
        assert_eq!(users_nodes.len(), 1);
        let capped = users.iter().find(|u| u.user == "capped").unwrap();
        assert_eq!((capped.running, capped.queued, capped.limit), (1, 1, 1));
    }

    #[test]
    fn draining_avoided_and_departed_nodes_get_nothing() {
        let mut c = cluster(&[("a", 1), ("b", 1)]);
        let conn_b = c.nodes["b"].conn;
        c.report(
            "b",
            &Reach::same("b:1"),
            conn_b,
            LoadReport {
                slots: 1,
                draining: true,
                ..LoadReport::default()
            },
        )
        .unwrap();
        let mut w = want("u", "b");
        w.avoid.insert("a".into());
        let (_, mut rx) = c.enqueue(w).unwrap();
        assert!(rx.try_recv().is_err(), "a is avoided and b drains");
        assert!(c.leave("b", conn_b));
        assert!(!c.leave("a", 999), "an old stream does not remove a node");
        assert_eq!(c.members().len(), 1);
    }

    #[test]
    fn a_full_queue_is_refused_and_silent_nodes_expire() {
        let mut c = Cluster::new(Limits {
            max_queued: 2,
            ..Limits::default()
        });
        let _a = c.enqueue(want("u", "b")).unwrap();
        let _b = c.enqueue(want("u", "b")).unwrap();
        assert_eq!(
            c.enqueue(want("u", "b")).unwrap_err(),
            QueueFull { queued: 2 }
        );
        let conn = c.new_conn();
        c.join("n", Reach::same("n:1"), conn, report(1)).unwrap();
        // Six missed heartbeats, as the README promises executors.
        assert_eq!(SILENCE_LIMIT, Duration::from_secs(3));
        let later = Instant::now() + SILENCE_LIMIT + Duration::from_millis(10);
        assert_eq!(c.expire_silent(later), vec!["n".to_owned()]);
    }

    #[test]
    fn a_live_name_is_not_taken_from_another_host() {
        let mut c = cluster(&[]);
        let first = c.new_conn();
        c.join("n", Reach::same("10.0.0.1:7460"), first, report(2))
            .unwrap();
        let thief = c.new_conn();
        let taken = c
            .join("n", Reach::same("10.0.0.9:7460"), thief, report(2))
            .unwrap_err();
        assert_eq!(taken.held.to_string(), "10.0.0.1");
        assert_eq!(taken.from.to_string(), "10.0.0.9");
        assert_eq!(c.members()[0].address, "10.0.0.1:7460");
        // The node itself, restarted on the same host, takes its name back.
        let restarted = c.new_conn();
        c.join("n", Reach::same("10.0.0.1:7461"), restarted, report(2))
            .unwrap();
        // Once it has left, the name is free.
        assert!(c.leave("n", restarted));
        c.join("n", Reach::same("10.0.0.9:7460"), thief, report(2))
            .unwrap();
    }

    #[test]
    fn a_desktop_gets_only_the_slots_it_offers_and_none_while_its_owner_works() {
        let mut c = cluster(&[("farm", 2)]);
        let desk = |offered| LoadReport {
            slots: 4,
            desktop: true,
            offered_slots: offered,
            ..LoadReport::default()
        };
        let conn = c.new_conn();
        c.join("desk", Reach::same("desk:1"), conn, desk(1))
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            let (_, mut rx) = c.enqueue(want("u", "b")).unwrap();
            got.push(rx.try_recv().map(|g| g.node).unwrap_or_default());
        }
        got.sort();
        assert_eq!(
            got,
            ["", "desk", "farm", "farm"],
            "one waits: 3 slots offered"
        );
        let (_, mut waiting) = c.enqueue(want("u", "b")).unwrap();
        c.report("desk", &Reach::same("desk:1"), conn, desk(0))
            .unwrap();
        assert!(waiting.try_recv().is_err(), "the owner needs the desk");
        c.report("desk", &Reach::same("desk:1"), conn, desk(4))
            .unwrap();
        assert_eq!(waiting.try_recv().unwrap().node, "desk");
    }
}
