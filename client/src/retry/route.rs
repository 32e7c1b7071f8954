//! The three ways to the farm, each as where the next attempt goes and what
//! an attempt's outcome leads to: placing over a node list ourselves, a
//! slot leased from the gatekeeper, or the whole job relayed by it.
//! docs/architecture.md ("Failures and where the client goes next") has
//! the table these follow.

use std::collections::HashSet;

use mexec_common::connector::Connector;
use mexec_common::load_query;
use mexec_common::nodes::NodeAddr;
use mexec_proto::v1::{Exit, LeaseTicket};

use crate::job::Job;
use crate::lease::{self, Lease};
use crate::member_cache::MemberCache;
use crate::node_run::Target;
use crate::os::SignalStream;
use crate::outcome::{NotStarted, Outcome};
use crate::placement::{Placement, Policy, SharedState};
use crate::say;
use crate::settings::Settings;

/// How often a job held for a slot looks at fresh load reports.
const HOLD_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);
/// How long the agent waits for a node of unknown size to say its load.
const ASK_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);
/// Nodes a leased job may be refused by before it runs locally.
const MAX_LEASE_REFUSALS: usize = 3;

/// What the retry loop does next.
pub(super) enum Step {
    /// Ask the route where to go (the next node, a new lease).
    Again,
    /// Run the job there.
    Run(Attempt),
    /// Every place is busy: back off, then ask again.
    Wait,
    /// Go on another way to the farm.
    Switch(Box<Route>),
    /// The node was lost mid-job: run again when the job is safe to repeat.
    Lost {
        node: String,
        reason: String,
        stdin_consumed: bool,
    },
    /// The job ran and ended there.
    Finished { node: String, exit: Exit },
    /// The user insisted with signals.
    Abandon(i32),
    /// No place could take the job: run it here (or fail), saying why.
    FallBack(String),
}

/// Where one attempt sends the job.
pub(super) struct Attempt {
    addr: NodeAddr,
    how: Via,
}

/// How an attempt reaches its node.
enum Via {
    /// Placed by us over a node list.
    Direct,
    /// On the node the gatekeeper leased, by its name, with its ticket.
    Leased {
        node: String,
        ticket: Option<Box<LeaseTicket>>,
    },
    /// Through the relaying gatekeeper.
    Relayed,
}

impl Attempt {
    pub(super) fn target(&self) -> Target<'_> {
        match &self.how {
            Via::Direct => Target::Executor(&self.addr),
            Via::Leased { node, ticket } => Target::Leased {
                addr: &self.addr,
                node,
                ticket: ticket.as_deref(),
            },
            Via::Relayed => Target::Relay(&self.addr),
        }
    }
}

/// What a route needs of the job's run.
#[derive(Clone, Copy)]
pub(super) struct Context<'a> {
    pub settings: &'a Settings,
    pub connector: &'a Connector,
    pub job: &'a Job,
}

impl Context<'_> {
    /// Says `what` with `--explain`.
    pub(super) fn explain(&self, what: &str) {
        if self.settings.verbose {
            say!("{what}");
        }
    }
}

/// A way to the farm, with what it learned from the attempts so far.
pub(super) enum Route {
    /// Placing over a node list ourselves, with load shared between clients.
    Direct(Direct),
    /// A slot from the gatekeeper, then straight to that node.
    Leased(Leased),
    /// The whole job through this gatekeeper.
    Relayed(NodeAddr),
}

impl Route {
    /// The way the settings ask for.
    pub(super) fn for_settings(settings: &Settings) -> Route {
        match &settings.farm.gatekeeper {
            Some(gatekeeper) if settings.relay => Route::Relayed(gatekeeper.clone()),
            Some(gatekeeper) => Route::Leased(Leased {
                gatekeeper: gatekeeper.clone(),
                avoid: Vec::new(),
                causes: Vec::new(),
                lease: None,
            }),
            None => Route::Direct(Direct::new(settings.farm.nodes.clone(), settings).holding()),
        }
    }

    /// Where the next attempt goes (or why none can go anywhere now).
    pub(super) async fn next(&mut self, cx: Context<'_>, signals: &mut SignalStream) -> Step {
        match self {
            Route::Direct(direct) => {
                if let Err(signal) = direct.hold(cx, signals).await {
                    return Step::Abandon(signal);
                }
                direct.next(cx)
            }
            Route::Leased(leased) => leased.next(cx, signals).await,
            Route::Relayed(gatekeeper) => Step::Run(Attempt {
                addr: gatekeeper.clone(),
                how: Via::Relayed,
            }),
        }
    }

    /// Where an attempt's outcome leads. The attempt's node or lease is
    /// given back first, whatever happened.
    pub(super) fn after(&mut self, cx: Context<'_>, outcome: Outcome) -> Step {
        match self {
            Route::Direct(direct) => direct.release(),
            Route::Leased(leased) => leased.release(),
            Route::Relayed(_) => {}
        }
        match outcome {
            Outcome::Finished { node, exit } => Step::Finished { node, exit },
            Outcome::Abandoned { signal } => Step::Abandon(signal),
            Outcome::Lost {
                node,
                reason,
                stdin_consumed,
            } => {
                if let Route::Direct(direct) = self {
                    direct.lost();
                }
                Step::Lost {
                    node,
                    reason,
                    stdin_consumed,
                }
            }
            Outcome::NotStarted(why) => match self {
                Route::Direct(direct) => direct.not_started(cx, why),
                Route::Leased(leased) => leased.not_started(cx, why),
                Route::Relayed(gatekeeper) => relay_not_started(cx, gatekeeper, why),
            },
        }
    }
}

/// Placing over a node list: each round tries every node once; nodes that
/// lost the job are not tried again for it.
pub(super) struct Direct {
    placement: Placement,
    /// Nodes that lost the job.
    lost: HashSet<usize>,
    /// Nodes tried this round.
    tried: HashSet<usize>,
    /// Whether a node this round was busy.
    busy: bool,
    /// Why the nodes of this round did not start the job.
    causes: Vec<String>,
    /// The node of the last attempt, reserved until it ended.
    current: Option<usize>,
    /// Whether the agent holds the job while every node is full: for a
    /// farm without a gatekeeper. Placing directly while the gatekeeper is
    /// away is a stopgap that must not wait (its members take direct jobs
    /// only until they rejoin it).
    hold: bool,
}

impl Direct {
    fn new(nodes: Vec<NodeAddr>, settings: &Settings) -> Direct {
        Direct {
            placement: Placement::new(nodes, SharedState::for_this_user())
                .with_policy(settings.placement),
            lost: HashSet::new(),
            tried: HashSet::new(),
            busy: false,
            causes: Vec::new(),
            current: None,
            hold: false,
        }
    }

    fn holding(mut self) -> Direct {
        self.hold = true;
        self
    }

    /// In the agent: learns the slots of nodes nobody knows yet, then holds
    /// the job while every node is full, until a slot frees anywhere (one
    /// queue on the build host, as the gatekeeper keeps one for the
    /// cluster). `Err` with the signal that ended the wait.
    async fn hold(&mut self, cx: Context<'_>, signals: &mut SignalStream) -> Result<(), i32> {
        if !self.hold {
            return Ok(());
        }
        if !self.placement.unknown_nodes().is_empty() {
            let _asking = SharedState::asking_nodes().await;
            let unknown = self.placement.unknown_nodes();
            ask_load(&self.placement, &unknown, cx.connector).await;
        }
        loop {
            let freed = SharedState::slot_freed_signal();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.placement.every_node_full(&self.tried) {
                return Ok(());
            }
            tokio::select! {
                _ = freed => {}
                // Others' jobs end too, seen only in fresh reports.
                _ = tokio::time::sleep(HOLD_RECHECK) => {
                    spawn_refresh(&self.placement, &self.placement.claim_stale(), cx.connector);
                }
                signal = signals.next() => return Err(signal),
            }
        }
    }

    fn next(&mut self, cx: Context<'_>) -> Step {
        if self.placement.nodes().is_empty() {
            return Step::FallBack(
                "no nodes are configured (set MEXEC_NODES, --nodes or MEXEC_GATEKEEPER)".into(),
            );
        }
        let cwd = cx.job.executor_cwd();
        let Some(choice) = self
            .placement
            .choose_for(&self.tried, cx.job.toolchain.as_ref(), &cwd)
        else {
            return self.round_over(cx);
        };
        self.tried.insert(choice.index);
        self.current = Some(choice.index);
        spawn_refresh(&self.placement, &choice.refresh, cx.connector);
        let addr = self.placement.nodes()[choice.index].clone();
        cx.explain(&format!(
            "running {} on {}: {}",
            cx.job.program(),
            addr.authority(),
            self.why_chosen(cx.settings.placement)
        ));
        Step::Run(Attempt {
            addr,
            how: Via::Direct,
        })
    }

    /// Why the node of this attempt was the one, for `--explain`.
    fn why_chosen(&self, policy: Policy) -> String {
        let rule = match policy {
            Policy::LeastLoaded => {
                "the least busy per slot (running, queued and other load, counting this                  user's other clients) of the nodes up"
            }
            Policy::Random => "chosen at random (--placement random)",
            Policy::RoundRobin => "the next in turn (--placement round-robin)",
        };
        let others = self.tried.len().saturating_sub(1);
        match others {
            0 => format!("{rule} (nodes marked without this tree come last)"),
            n => format!("{rule}, other than the {n} tried already"),
        }
    }

    /// Every node was tried: a busy farm is waited for (never a reason to
    /// run here), anything else is.
    fn round_over(&mut self, cx: Context<'_>) -> Step {
        // Nodes skipped for a compiler known to differ were never asked.
        if let Some(ours) = &cx.job.toolchain {
            for skipped in self.placement.known_mismatches(ours) {
                if !self.causes.contains(&skipped) {
                    self.causes.push(skipped);
                }
            }
        }
        if self.busy {
            self.busy = false;
            self.tried = self.lost.clone();
            self.causes.clear();
            return Step::Wait;
        }
        let why = if self.causes.is_empty() {
            "every node was lost during the job".to_owned()
        } else {
            self.causes.join("; ")
        };
        Step::FallBack(format!("no node could run the job ({why})"))
    }

    fn release(&mut self) {
        if let Some(index) = self.current {
            self.placement.release(index);
        }
    }

    /// The last node lost the job: other clients skip it for a while, and
    /// this job does not go back to it.
    fn lost(&mut self) {
        if let Some(index) = self.current {
            self.placement.mark_down(index);
            self.lost.insert(index);
        }
    }

    fn not_started(&mut self, cx: Context<'_>, why: NotStarted) -> Step {
        match why {
            NotStarted::Busy(cause) => {
                self.busy = true;
                cx.explain(&cause);
            }
            NotStarted::Unreachable(cause) => {
                if let Some(index) = self.current {
                    self.placement.mark_down(index);
                    let addr = &self.placement.nodes()[index];
                    self.causes
                        .push(format!("{} unreachable: {cause}", addr.authority()));
                }
            }
            NotStarted::Refused(cause) => self.causes.push(cause),
        }
        Step::Again
    }
}

/// Slots leased from the gatekeeper, which knows the whole cluster's load.
pub(super) struct Leased {
    gatekeeper: NodeAddr,
    /// Nodes that did not run the job: the next lease avoids them.
    avoid: Vec<String>,
    /// Why leased nodes did not start the job.
    causes: Vec<String>,
    /// The lease of the attempt under way.
    lease: Option<Lease>,
}

impl Leased {
    async fn next(&mut self, cx: Context<'_>, signals: &mut SignalStream) -> Step {
        let gatekeeper = &self.gatekeeper;
        let lease = tokio::select! {
            lease = lease::acquire(cx.connector, gatekeeper, cx.job, &self.avoid) => lease,
            signal = signals.next() => return Step::Abandon(signal),
        };
        match lease {
            Ok(lease) => {
                cx.explain(&format!(
                    "running {} on {} ({}): leased by the gatekeeper, the least busy member \
                     with a free slot for the next in the fair queue{}",
                    cx.job.program(),
                    lease.node,
                    lease.addr.authority(),
                    match self.avoid.len() {
                        0 => String::new(),
                        n => format!(", avoiding {n} that did not run it"),
                    }
                ));
                let attempt = Attempt {
                    addr: lease.addr.clone(),
                    how: Via::Leased {
                        node: lease.node.clone(),
                        ticket: lease.ticket.clone(),
                    },
                };
                self.lease = Some(lease);
                Step::Run(attempt)
            }
            Err(NotStarted::Busy(cause)) => {
                cx.explain(&cause);
                Step::Wait
            }
            Err(NotStarted::Unreachable(cause)) => without_gatekeeper(cx, gatekeeper, &cause),
            Err(NotStarted::Refused(cause)) => {
                Step::FallBack(format!("gatekeeper {}: {cause}", gatekeeper.authority()))
            }
        }
    }

    /// Gives the slot back; the next lease avoids its node.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.avoid.push(lease.node);
        }
    }

    fn not_started(&mut self, cx: Context<'_>, why: NotStarted) -> Step {
        match why {
            // The gatekeeper can see the node, we cannot: we are outside
            // the cluster, so let the gatekeeper relay.
            NotStarted::Unreachable(cause) => {
                cx.explain(&format!("{cause}; relaying through the gatekeeper"));
                Step::Switch(Box::new(Route::Relayed(self.gatekeeper.clone())))
            }
            NotStarted::Busy(cause) | NotStarted::Refused(cause) => {
                self.causes.push(cause);
                if self.causes.len() < MAX_LEASE_REFUSALS {
                    return Step::Again;
                }
                let why = self.causes.join("; ");
                Step::FallBack(format!("no node could run the job ({why})"))
            }
        }
    }
}

/// The gatekeeper is down: place directly over the configured nodes, else
/// the members it last told us about. Nodes given explicitly always win:
/// the cache is only a hint, and one we cannot trust is not used at all.
fn without_gatekeeper(cx: Context<'_>, gatekeeper: &NodeAddr, cause: &str) -> Step {
    let configured = &cx.settings.farm.nodes;
    let (nodes, source) = if !configured.is_empty() {
        (configured.clone(), "configured")
    } else {
        match MemberCache::for_gatekeeper(gatekeeper).nodes() {
            Ok(cached) if !cached.is_empty() => (cached, "last known"),
            Ok(_) => (Vec::new(), "configured"),
            Err(refused) => {
                say!("{refused}");
                (Vec::new(), "configured")
            }
        }
    };
    say!(
        "gatekeeper {} unreachable ({cause}); placing directly over {} {source} nodes",
        gatekeeper.authority(),
        nodes.len()
    );
    Step::Switch(Box::new(Route::Direct(Direct::new(nodes, cx.settings))))
}

fn relay_not_started(cx: Context<'_>, gatekeeper: &NodeAddr, why: NotStarted) -> Step {
    match why {
        NotStarted::Busy(cause) => {
            cx.explain(&cause);
            Step::Wait
        }
        NotStarted::Unreachable(cause) => Step::FallBack(format!(
            "gatekeeper {} unreachable: {cause}",
            gatekeeper.authority()
        )),
        NotStarted::Refused(cause) => Step::FallBack(cause),
    }
}

/// Asks `nodes` for their load and waits for the answers (or
/// `ASK_WITHIN`); a node that does not answer is marked down.
async fn ask_load(placement: &Placement, nodes: &[usize], connector: &Connector) {
    let mut asks = tokio::task::JoinSet::new();
    for &index in nodes {
        let (addr, connector) = (placement.nodes()[index].clone(), connector.clone());
        asks.spawn(async move {
            let asked = load_query::node_load(&connector, &addr);
            (index, tokio::time::timeout(ASK_WITHIN, asked).await)
        });
    }
    while let Some(answer) = asks.join_next().await {
        match answer {
            Ok((index, Ok(Ok(report)))) => placement.record(index, &report),
            Ok((index, _)) => placement.mark_down(index),
            Err(_) => {}
        }
    }
}

/// Fetches stale load reports in the background; a short job may end
/// first, and then the next client does it.
fn spawn_refresh(placement: &Placement, stale: &[usize], connector: &Connector) {
    for &index in stale {
        let addr = placement.nodes()[index].clone();
        let connector = connector.clone();
        let nodes = placement.nodes().to_vec();
        tokio::spawn(async move {
            if let Ok(report) = load_query::node_load(&connector, &addr).await {
                Placement::new(nodes, SharedState::for_this_user()).record(index, &report);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor_view::ExecutorView;

    /// What a route reads of the run.
    struct Run {
        settings: Settings,
        connector: Connector,
        job: Job,
    }

    impl Run {
        fn new() -> Run {
            let job = Job {
                argv: vec!["cc".into()],
                cwd: "/".into(),
                env: Vec::new(),
                umask: 0o022,
                job_id: "j".into(),
                user: "u".into(),
                client_host: "h".into(),
                build_id: "b".into(),
                timeout: None,
                forward_stdin: false,
                repeatable: true,
                for_executors: ExecutorView::default(),
                toolchain: None,
                require: Vec::new(),
            };
            Run {
                settings: Settings::default(),
                connector: mexec_common::farm::Farm::default().connector(),
                job,
            }
        }

        fn cx(&self) -> Context<'_> {
            Context {
                settings: &self.settings,
                connector: &self.connector,
                job: &self.job,
            }
        }
    }

    fn not_started(why: NotStarted) -> Outcome {
        Outcome::NotStarted(why)
    }

    /// Direct placement over `nodes`, with its state in `dir`.
    fn direct(dir: &std::path::Path, nodes: &str) -> Route {
        let nodes = mexec_common::nodes::parse_node_list(nodes).unwrap();
        Route::Direct(Direct {
            placement: Placement::new(nodes, SharedState::at(dir.join("placement.json"))),
            lost: HashSet::new(),
            tried: HashSet::new(),
            busy: false,
            causes: Vec::new(),
            current: None,
            hold: false,
        })
    }

    fn next_node(route: &mut Route, cx: Context<'_>) -> Step {
        match route {
            Route::Direct(direct) => direct.next(cx),
            _ => panic!("not direct"),
        }
    }

    // Tokio tests: choosing a node starts the refresh of stale load reports.
    #[tokio::test]
    async fn direct_tries_each_node_once_then_falls_back_with_every_cause() {
        let run = Run::new();
        let dir = tempfile::tempdir().unwrap();
        let mut route = direct(dir.path(), "127.0.0.1:1,127.0.0.1:2");
        for why in [
            NotStarted::Unreachable("down".into()),
            NotStarted::Refused("no".into()),
        ] {
            assert!(matches!(next_node(&mut route, run.cx()), Step::Run(_)));
            assert!(matches!(
                route.after(run.cx(), not_started(why)),
                Step::Again
            ));
        }
        let Step::FallBack(why) = next_node(&mut route, run.cx()) else {
            panic!("no fallback");
        };
        assert!(
            why.starts_with("no node could run the job (127.0.0.1:"),
            "{why}"
        );
        assert!(why.ends_with(" unreachable: down; no)"), "{why}");
    }

    #[tokio::test]
    async fn a_busy_round_waits_and_starts_over() {
        let run = Run::new();
        let dir = tempfile::tempdir().unwrap();
        let mut route = direct(dir.path(), "127.0.0.1:1");
        assert!(matches!(next_node(&mut route, run.cx()), Step::Run(_)));
        let busy = not_started(NotStarted::Busy("full".into()));
        assert!(matches!(route.after(run.cx(), busy), Step::Again));
        assert!(matches!(next_node(&mut route, run.cx()), Step::Wait));
        assert!(matches!(next_node(&mut route, run.cx()), Step::Run(_)));
    }

    #[test]
    fn a_leased_node_out_of_reach_switches_to_the_relay_and_refusals_run_out() {
        let run = Run::new();
        let mut leased = Route::Leased(Leased {
            gatekeeper: "g:1".parse().unwrap(),
            avoid: Vec::new(),
            causes: Vec::new(),
            lease: None,
        });
        let unreachable = not_started(NotStarted::Unreachable("cut".into()));
        let Step::Switch(next) = leased.after(run.cx(), unreachable) else {
            panic!("no switch");
        };
        assert!(matches!(*next, Route::Relayed(_)));
        for round in 1..=MAX_LEASE_REFUSALS {
            let refused = not_started(NotStarted::Refused(format!("r{round}")));
            match leased.after(run.cx(), refused) {
                Step::Again => assert!(round < MAX_LEASE_REFUSALS),
                Step::FallBack(why) => {
                    assert_eq!(round, MAX_LEASE_REFUSALS);
                    assert_eq!(why, "no node could run the job (r1; r2; r3)");
                }
                _ => panic!("round {round}"),
            }
        }
    }

    #[test]
    fn a_relayed_job_waits_while_busy_and_falls_back_otherwise() {
        let run = Run::new();
        let mut relayed = Route::Relayed("g:1".parse().unwrap());
        let busy = not_started(NotStarted::Busy("full".into()));
        assert!(matches!(relayed.after(run.cx(), busy), Step::Wait));
        let down = not_started(NotStarted::Unreachable("refused".into()));
        let Step::FallBack(why) = relayed.after(run.cx(), down) else {
            panic!("no fallback");
        };
        assert_eq!(why, "gatekeeper g:1 unreachable: refused");
        let lost = Outcome::Lost {
            node: "n1".into(),
            reason: "reset".into(),
            stdin_consumed: false,
        };
        assert!(matches!(relayed.after(run.cx(), lost), Step::Lost { .. }));
    }
}
