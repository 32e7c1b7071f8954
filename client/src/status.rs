//! `mexec --status`: every node's load, as a table or JSON.

use mexec_common::nodes::NodeAddr;
use mexec_common::token::Token;
use serde::Serialize;

use crate::remote;

/// One row of the status table.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub address: String,
    pub reachable: bool,
    pub node: Option<String>,
    pub version: Option<String>,
    pub slots: Option<u32>,
    pub running: Option<u32>,
    pub queued: Option<u32>,
    pub load_avg_1m: Option<f64>,
    pub foreign_load: Option<f64>,
    pub mem_available_mib: Option<u64>,
    pub draining: Option<bool>,
    pub os: Option<String>,
    pub arch: Option<String>,
    pub error: Option<String>,
}

/// Asks every node at once.
pub async fn collect(nodes: &[NodeAddr], token: Option<&Token>) -> Vec<NodeStatus> {
    let queries: Vec<_> = nodes
        .iter()
        .map(|addr| {
            let addr = addr.clone();
            let token = token.cloned();
            tokio::spawn(async move { query(&addr, token.as_ref()).await })
        })
        .collect();
    let mut rows = Vec::with_capacity(queries.len());
    for query in queries {
        rows.push(query.await.expect("a status query panicked"));
    }
    rows
}

async fn query(addr: &NodeAddr, token: Option<&Token>) -> NodeStatus {
    match remote::load_report(addr, token).await {
        Ok(r) => NodeStatus {
            address: addr.authority(),
            reachable: true,
            node: Some(r.node),
            version: Some(r.version),
            slots: Some(r.slots),
            running: Some(r.running),
            queued: Some(r.queued),
            load_avg_1m: Some(r.load_avg_1m),
            foreign_load: Some(r.foreign_load),
            mem_available_mib: Some(r.mem_available_bytes / (1024 * 1024)),
            draining: Some(r.draining),
            os: Some(r.os),
            arch: Some(r.arch),
            error: None,
        },
        Err(error) => NodeStatus {
            address: addr.authority(),
            reachable: false,
            node: None,
            version: None,
            slots: None,
            running: None,
            queued: None,
            load_avg_1m: None,
            foreign_load: None,
            mem_available_mib: None,
            draining: None,
            os: None,
            arch: None,
            error: Some(error),
        },
    }
}

/// The table a person reads.
pub fn table(rows: &[NodeStatus]) -> String {
    let mut text = format!(
        "{:<22} {:<14} {:>5} {:>7} {:>6} {:>6} {:>8} {:>9} {:<8} {}\n",
        "ADDRESS",
        "NODE",
        "SLOTS",
        "RUNNING",
        "QUEUED",
        "LOAD",
        "FOREIGN",
        "MEM(MiB)",
        "VERSION",
        "STATE"
    );
    for r in rows {
        let state = match (r.reachable, r.draining) {
            (false, _) => format!("unreachable: {}", r.error.as_deref().unwrap_or("")),
            (true, Some(true)) => "draining".to_owned(),
            (true, _) => "up".to_owned(),
        };
        let num = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let float = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "{:<22} {:<14} {:>5} {:>7} {:>6} {:>6} {:>8} {:>9} {:<8} {}\n",
            r.address,
            r.node.as_deref().unwrap_or("-"),
            num(r.slots),
            num(r.running),
            num(r.queued),
            float(r.load_avg_1m),
            float(r.foreign_load),
            r.mem_available_mib
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r.version.as_deref().unwrap_or("-"),
            state
        ));
    }
    text
}
