//! The cluster's capacity: the slots of the nodes that are up and not
//! draining, from the gatekeeper when there is one, else from the nodes
//! themselves. Measured once before make starts, then every poll interval by
//! a background thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mexec_common::connector::Connector;
use mexec_common::farm::Farm;
use mexec_common::load_query;

/// What the cluster offers now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Slots of healthy nodes, summed.
    pub slots: u32,
    /// Per node: name, slots, jobs running.
    pub nodes: Vec<NodeLoad>,
}

/// One node's share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLoad {
    pub node: String,
    pub slots: u32,
    pub running: u32,
}

/// Asks the cluster once.
pub fn measure(farm: &Farm, connector: &Connector) -> Result<Capacity, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(ask(farm, connector));
    runtime.shutdown_background();
    result
}

async fn ask(farm: &Farm, connector: &Connector) -> Result<Capacity, String> {
    if let Some(gatekeeper) = &farm.gatekeeper {
        let reply = load_query::cluster_status(connector, gatekeeper)
            .await
            .map_err(|e| format!("gatekeeper {} unreachable: {e}", gatekeeper.authority()))?;
        let nodes: Vec<NodeLoad> = reply
            .nodes
            .iter()
            .filter_map(|n| n.load.as_ref())
            .filter(|load| !load.draining)
            .map(|load| NodeLoad {
                node: load.node.clone(),
                slots: load.slots,
                running: load.running,
            })
            .collect();
        return Ok(total(nodes));
    }
    if farm.nodes.is_empty() {
        return Err("no nodes are configured (MEXEC_NODES, --nodes or MEXEC_GATEKEEPER)".into());
    }
    Ok(ask_nodes(connector, &farm.nodes).await)
}

/// With the gatekeeper unreachable, the members it last listed (the
/// client's member cache), asked one by one; `why` is the gatekeeper's
/// failure. Says on stderr that it does so.
pub fn cached_members(
    gatekeeper: &mexec_common::nodes::NodeAddr,
    connector: &Connector,
    why: &str,
) -> Result<Capacity, String> {
    let cache = mexec_client::member_cache::MemberCache::for_gatekeeper(gatekeeper);
    let nodes = cache
        .nodes()
        .map_err(|refused| format!("{why}; {refused}"))?;
    if nodes.is_empty() {
        return Err(format!("{why}; no members of it are cached"));
    }
    eprintln!(
        "mpmake: {why}; sizing for the {} members it last listed (cached)",
        nodes.len()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let capacity = runtime.block_on(ask_nodes(connector, &nodes));
    runtime.shutdown_background();
    Ok(capacity)
}

async fn ask_nodes(connector: &Connector, nodes: &[mexec_common::nodes::NodeAddr]) -> Capacity {
    let answers = load_query::node_loads(connector, nodes).await;
    let nodes = answers
        .into_iter()
        .filter_map(Result::ok)
        .filter(|report| !report.draining)
        .map(|report| NodeLoad {
            node: report.node,
            slots: report.slots,
            running: report.running,
        })
        .collect();
    total(nodes)
}

fn total(nodes: Vec<NodeLoad>) -> Capacity {
    Capacity {
        slots: nodes.iter().map(|n| n.slots).sum(),
        nodes,
    }
}

/// Follows the capacity in a background thread.
#[derive(Debug)]
pub struct Watch {
    latest: Arc<Mutex<Option<Capacity>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts asking every `interval`.
    pub fn start(farm: Farm, connector: Connector, interval: Duration) -> Watch {
        let latest = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (latest, stop) = (latest.clone(), stop.clone());
            std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                while !stop.load(Ordering::Acquire) {
                    // An unreachable cluster keeps the last answer: make
                    // goes on with the tokens it has rather than none.
                    if let Ok(capacity) = runtime.block_on(ask(&farm, &connector)) {
                        *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(capacity);
                    }
                    let mut slept = Duration::ZERO;
                    while slept < interval && !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(50));
                        slept += Duration::from_millis(50);
                    }
                }
                runtime.shutdown_background();
            })
        };
        Watch {
            latest,
            stop,
            thread: Some(thread),
        }
    }

    /// The latest answer, if any came.
    pub fn latest(&self) -> Option<Capacity> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
