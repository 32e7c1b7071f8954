//! `mexec --status`: every node's load, as a table or JSON. Desktop nodes
//! show the slots they offer now and why (`OFFER`, and the state column).

use mexec_common::connector::Connector;
use mexec_common::farm::Farm;
use mexec_common::load_query::{self, NoReport};
use mexec_common::nodes::NodeAddr;
use mexec_proto::v1::LoadReport;
use serde::Serialize;

use crate::status_toolchains::{self, Ours};
use crate::{say, EXIT_MEXEC_FAILURE};

/// Prints the status of the gatekeeper's cluster, else of the configured
/// nodes, and returns the exit code: 1 when nobody answered.
pub fn show(farm: &Farm, connector: &Connector, json: bool) -> i32 {
    if farm.gatekeeper.is_none() && farm.nodes.is_empty() {
        say!("no nodes are configured (set MEXEC_NODES or --nodes)");
        return EXIT_MEXEC_FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = runtime.block_on(async {
        match &farm.gatekeeper {
            Some(gatekeeper) => show_cluster(connector, gatekeeper, json).await,
            None => show_nodes(connector, &farm.nodes, json).await,
        }
    });
    runtime.shutdown_background();
    code
}

/// `--status --watch`: the status redrawn every second, on a cleared
/// screen, until interrupted.
pub fn watch(farm: &Farm, connector: &Connector) -> i32 {
    loop {
        let mut screen = Vec::new();
        // Home and clear, then the table: one write, so it does not flicker.
        screen.extend_from_slice(b"\x1b[H\x1b[2J");
        let shown = capture_status(farm, connector);
        screen.extend_from_slice(shown.as_bytes());
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &screen);
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The status table as `show` prints it, or why it is missing.
fn capture_status(farm: &Farm, connector: &Connector) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let text = runtime.block_on(async {
        match &farm.gatekeeper {
            Some(gatekeeper) => match load_query::cluster_status(connector, gatekeeper).await {
                Ok(reply) => cluster_table(&reply),
                Err(err) => format!("gatekeeper {} unreachable: {err}\n", gatekeeper.authority()),
            },
            None => table(&collect(connector, &farm.nodes).await),
        }
    });
    runtime.shutdown_background();
    text
}

async fn show_cluster(connector: &Connector, gatekeeper: &NodeAddr, json: bool) -> i32 {
    match load_query::cluster_status(connector, gatekeeper).await {
        Ok(reply) if json => {
            let mut status = cluster_json(&reply);
            status["gatekeeper"] = gatekeeper.authority().into();
            println!("{status:#}");
            0
        }
        Ok(reply) => {
            print!("{}", cluster_table(&reply));
            let reports: Vec<LoadReport> =
                reply.nodes.iter().filter_map(|n| n.load.clone()).collect();
            print!(
                "{}",
                status_toolchains::section(&reports, &mut Ours::default())
            );
            0
        }
        Err(err) => {
            say!("gatekeeper {} unreachable: {err}", gatekeeper.authority());
            1
        }
    }
}

async fn show_nodes(connector: &Connector, nodes: &[NodeAddr], json: bool) -> i32 {
    let answers = answers(connector, nodes).await;
    let reports: Vec<LoadReport> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().cloned())
        .collect();
    let rows: Vec<NodeStatus> = nodes.iter().zip(answers).map(|(a, r)| row(a, r)).collect();
    if json {
        println!("{:#}", nodes_json(&rows));
    } else {
        print!("{}", table(&rows));
        print!(
            "{}",
            status_toolchains::section(&reports, &mut Ours::default())
        );
    }
    if rows.iter().any(|r| r.reachable) {
        0
    } else {
        1
    }
}

/// One row of the status table.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub address: String,
    pub reachable: bool,
    pub node: Option<String>,
    pub version: Option<String>,
    pub slots: Option<u32>,
    /// Slots offered now: fewer than `slots` on a desktop whose owner works.
    pub offered_slots: Option<u32>,
    /// A desktop node, whose owner comes first.
    pub desktop: Option<bool>,
    /// Why a desktop offers fewer slots ("owner load 1.7"); empty when not.
    pub offer_reason: Option<String>,
    /// A desktop's owner's load, smoothed over about a second.
    pub owner_load: Option<f64>,
    /// Whether a desktop is giving its repeatable jobs back.
    pub reclaiming: Option<bool>,
    pub running: Option<u32>,
    pub queued: Option<u32>,
    pub load_avg_1m: Option<f64>,
    pub foreign_load: Option<f64>,
    pub mem_available_mib: Option<u64>,
    pub draining: Option<bool>,
    /// The directory missing on the node (the shared tree is not mounted
    /// there): clients pass over it for jobs under it. Empty when none.
    pub unmounted: Option<String>,
    pub os: Option<String>,
    pub arch: Option<String>,
    /// Compilers by program: digest, version, target, driver, and whether
    /// it is this client's.
    pub toolchains: Option<serde_json::Value>,
    /// What jobs may require of the node.
    pub properties: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// Asks every node at once.
pub async fn collect(connector: &Connector, nodes: &[NodeAddr]) -> Vec<NodeStatus> {
    let answers = answers(connector, nodes).await;
    nodes
        .iter()
        .zip(answers)
        .map(|(addr, answer)| row(addr, answer))
        .collect()
}

/// Every node's load report, or why there is none.
async fn answers(connector: &Connector, nodes: &[NodeAddr]) -> Vec<Result<LoadReport, String>> {
    let mut answers = load_query::node_loads(connector, nodes).await;
    if connector.tls().is_none() {
        name_what_answered(nodes, &mut answers).await;
    }
    answers
        .into_iter()
        .map(|answer| answer.map_err(|no| no.message))
        .collect()
}

/// For a client without TLS: a node that gave no load report, and no
/// refusal either, may be no mexec port at all (a web server, a TLS
/// port); ask each such address what it is (`port_probe`, all at once)
/// and say so instead of the transport's words.
async fn name_what_answered(nodes: &[NodeAddr], answers: &mut [Result<LoadReport, NoReport>]) {
    let unexplained =
        |answer: &Result<LoadReport, NoReport>| answer.as_ref().is_err_and(|no| !no.refused);
    let probes: Vec<_> = nodes
        .iter()
        .zip(answers.iter())
        .filter(|(_, answer)| unexplained(answer))
        .map(|(node, _)| {
            let authority = node.authority();
            tokio::spawn(async move { (crate::port_probe::probe(&authority).await, authority) })
        })
        .collect();
    let failed = answers.iter_mut().filter(|answer| unexplained(answer));
    for (answer, probe) in failed.zip(probes) {
        if let Ok((Some(speaks), authority)) = probe.await {
            *answer = Err(NoReport {
                message: speaks.explain(&authority),
                refused: false,
            });
        }
    }
}

fn row(addr: &NodeAddr, answer: Result<LoadReport, String>) -> NodeStatus {
    match answer {
        Ok(r) => {
            let (toolchains, properties) = status_toolchains::node_json(&r, &mut Ours::default());
            NodeStatus {
                toolchains: Some(toolchains),
                properties: Some(properties),
                offered_slots: Some(load_query::offered_slots(&r)),
                address: addr.authority(),
                reachable: true,
                node: Some(r.node),
                version: Some(r.version),
                slots: Some(r.slots),
                desktop: Some(r.desktop),
                offer_reason: Some(r.offer_reason),
                owner_load: Some(r.owner_load),
                reclaiming: Some(r.reclaiming),
                running: Some(r.running),
                queued: Some(r.queued),
                load_avg_1m: Some(r.load_avg_1m),
                foreign_load: Some(r.foreign_load),
                mem_available_mib: Some(r.mem_available_bytes / (1024 * 1024)),
                draining: Some(r.draining),
                unmounted: Some(r.unmounted),
                os: Some(r.os),
                arch: Some(r.arch),
                error: None,
            }
        }
        Err(error) => NodeStatus {
            address: addr.authority(),
            reachable: false,
            node: None,
            version: None,
            slots: None,
            offered_slots: None,
            desktop: None,
            offer_reason: None,
            owner_load: None,
            reclaiming: None,
            running: None,
            queued: None,
            load_avg_1m: None,
            foreign_load: None,
            mem_available_mib: None,
            draining: None,
            unmounted: None,
            os: None,
            arch: None,
            toolchains: None,
            properties: None,
            error: Some(error),
        },
    }
}

/// The table a person reads.
pub fn table(rows: &[NodeStatus]) -> String {
    let mut text = format!(
        "{:<22} {:<14} {:>5} {:>5} {:>7} {:>6} {:>6} {:>8} {:>9} {:<8} {}\n",
        "ADDRESS",
        "NODE",
        "SLOTS",
        "OFFER",
        "RUNNING",
        "QUEUED",
        "LOAD",
        "FOREIGN",
        "MEM(MiB)",
        "VERSION",
        "STATE"
    );
    for r in rows {
        let state = match r.reachable {
            false => format!("unreachable: {}", r.error.as_deref().unwrap_or("")),
            true => {
                state(
                    r.draining == Some(true),
                    r.desktop == Some(true),
                    r.offer_reason.as_deref().unwrap_or(""),
                    r.reclaiming == Some(true),
                ) + &unmounted_note(r.unmounted.as_deref().unwrap_or(""))
            }
        };
        let num = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let float = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "{:<22} {:<14} {:>5} {:>5} {:>7} {:>6} {:>6} {:>8} {:>9} {:<8} {}\n",
            r.address,
            r.node.as_deref().unwrap_or("-"),
            num(r.slots),
            num(r.offered_slots),
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

/// A node's state column: up or draining, and for a desktop node what
/// keeps it from offering all its slots.
fn state(draining: bool, desktop: bool, reason: &str, reclaiming: bool) -> String {
    let mut text = if draining { "draining" } else { "up" }.to_owned();
    if desktop {
        text.push_str(", desktop");
        if !reason.is_empty() {
            text.push_str(": ");
            text.push_str(reason);
        }
        if reclaiming {
            text.push_str(", reclaiming");
        }
    }
    text
}

/// What the state column adds for a node without the shared tree.
fn unmounted_note(unmounted: &str) -> String {
    match unmounted {
        "" => String::new(),
        dir => format!(", not mounted: {dir} (skipped for jobs under it)"),
    }
}

/// The gatekeeper's view: nodes, users and running jobs, as tables.
pub fn cluster_table(reply: &mexec_proto::v1::ClusterStatusReply) -> String {
    let mut text = format!(
        "{:<22} {:<14} {:>5} {:>5} {:>7} {:>6} {:>6} {:>6} {:>8} {:<8} {}\n",
        "ADDRESS",
        "NODE",
        "SLOTS",
        "OFFER",
        "RUNNING",
        "QUEUED",
        "LEASED",
        "LOAD",
        "FOREIGN",
        "VERSION",
        "STATE"
    );
    for n in &reply.nodes {
        let load = n.load.clone().unwrap_or_default();
        let state = state(
            load.draining,
            load.desktop,
            &load.offer_reason,
            load.reclaiming,
        ) + &unmounted_note(&load.unmounted);
        text.push_str(&format!(
            "{:<22} {:<14} {:>5} {:>5} {:>7} {:>6} {:>6} {:>6.2} {:>8.2} {:<8} {}\n",
            n.address,
            load.node,
            load.slots,
            load_query::offered_slots(&load),
            load.running,
            load.queued,
            n.leased,
            load.load_avg_1m,
            load.foreign_load,
            load.version,
            state
        ));
    }
    text.push_str(&format!(
        "\n{} requests waiting (at most {}), gatekeeper {}\n",
        reply.queued, reply.max_queued, reply.version
    ));
    if !reply.users.is_empty() {
        text.push_str(&format!(
            "\n{:<16} {:>7} {:>6} {:>6}\n",
            "USER", "RUNNING", "QUEUED", "LIMIT"
        ));
        for u in &reply.users {
            let limit = if u.limit == 0 {
                "-".to_owned()
            } else {
                u.limit.to_string()
            };
            text.push_str(&format!(
                "{:<16} {:>7} {:>6} {:>6}\n",
                u.user, u.running, u.queued, limit
            ));
        }
    }
    if !reply.jobs.is_empty() {
        let now = mexec_common::clock::now_ms();
        text.push_str(&format!(
            "\n{:<34} {:<12} {:<24} {:<14} {:<12} {:>8}\n",
            "JOB", "USER", "BUILD", "NODE", "PROGRAM", "SECONDS"
        ));
        for j in &reply.jobs {
            text.push_str(&format!(
                "{:<34} {:<12} {:<24} {:<14} {:<12} {:>8.1}{}\n",
                j.job_id,
                j.user,
                j.build_id,
                j.node,
                j.program,
                now.saturating_sub(j.since_unix_ms) as f64 / 1000.0,
                if j.relayed { " relayed" } else { "" }
            ));
        }
    }
    text
}

/// The nodes' own answers as JSON for scripts, in the schema of the
/// gatekeeper's view (`cluster_json`): the same keys, what only a
/// gatekeeper knows null or empty.
pub fn nodes_json(rows: &[NodeStatus]) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut node = serde_json::to_value(row).expect("rows serialize");
            node["leased"] = serde_json::Value::Null;
            node["last_report_ms"] = serde_json::Value::Null;
            node
        })
        .collect();
    serde_json::json!({
        "gatekeeper": null, "version": null, "queued": null, "max_queued": null,
        "nodes": nodes, "users": [], "jobs": [],
    })
}

/// The gatekeeper's view as JSON for scripts (`--status --json`, whose
/// schema `nodes_json` keeps without a gatekeeper).
pub fn cluster_json(reply: &mexec_proto::v1::ClusterStatusReply) -> serde_json::Value {
    let mut ours = Ours::default();
    let nodes: Vec<_> = reply
        .nodes
        .iter()
        .map(|n| {
            let load = n.load.clone().unwrap_or_default();
            let (toolchains, properties) = status_toolchains::node_json(&load, &mut ours);
            serde_json::json!({
                "toolchains": toolchains, "properties": properties,
                "address": n.address, "node": load.node, "slots": load.slots,
                "running": load.running, "queued": load.queued, "leased": n.leased,
                "load_avg_1m": load.load_avg_1m, "foreign_load": load.foreign_load,
                "draining": load.draining, "version": load.version,
                "last_report_ms": n.last_report_ms,
                "offered_slots": load_query::offered_slots(&load), "desktop": load.desktop,
                "offer_reason": load.offer_reason, "owner_load": load.owner_load,
                "reclaiming": load.reclaiming, "unmounted": load.unmounted,
                "reachable": true, "error": null, "os": load.os, "arch": load.arch,
                "mem_available_mib": load.mem_available_bytes / (1024 * 1024),
            })
        })
        .collect();
    let users: Vec<_> = reply
        .users
        .iter()
        .map(|u| serde_json::json!({"user": u.user, "running": u.running, "queued": u.queued, "limit": u.limit}))
        .collect();
    let jobs: Vec<_> = reply
        .jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "job_id": j.job_id, "user": j.user, "build_id": j.build_id, "node": j.node,
                "program": j.program, "since_unix_ms": j.since_unix_ms, "relayed": j.relayed,
            })
        })
        .collect();
    serde_json::json!({
        "nodes": nodes, "users": users, "jobs": jobs,
        "queued": reply.queued, "max_queued": reply.max_queued, "version": reply.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_desktop_shows_what_it_offers_and_why() {
        let report = LoadReport {
            node: "desk".into(),
            slots: 2,
            desktop: true,
            offered_slots: 0,
            offer_reason: "owner load 1.7".into(),
            reclaiming: true,
            ..LoadReport::default()
        };
        let addr: NodeAddr = "127.0.0.1:1".parse().unwrap();
        let text = table(&[row(&addr, Ok(report.clone()))]);
        let line = text.lines().nth(1).unwrap();
        assert!(
            line.contains("up, desktop: owner load 1.7, reclaiming"),
            "{line}"
        );
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cells[2..4], ["2", "0"], "{line}");

        let plain = LoadReport {
            node: "farm".into(),
            slots: 4,
            ..LoadReport::default()
        };
        let row = row(&addr, Ok(plain));
        assert_eq!((row.offered_slots, row.desktop), (Some(4), Some(false)));
        assert!(table(&[row]).lines().nth(1).unwrap().ends_with(" up"));

        let reply = mexec_proto::v1::ClusterStatusReply {
            nodes: vec![mexec_proto::v1::NodeStatus {
                load: Some(report),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(cluster_table(&reply).contains("desktop: owner load 1.7"));
        let json = cluster_json(&reply);
        assert_eq!(json["nodes"][0]["offered_slots"], 0);
        assert_eq!(json["nodes"][0]["offer_reason"], "owner load 1.7");
    }
}
