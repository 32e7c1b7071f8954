//! `mexec --usage`: per-user accounting from the gatekeeper's database, as
//! a table (one block per window) or JSON.

use mexec_common::connector::Connector;
use mexec_common::farm::Farm;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{UsageReply, UsageRequest};

use crate::{say, EXIT_MEXEC_FAILURE};

/// Prints the accounting and returns the exit code.
pub fn show(farm: &Farm, connector: &Connector, json: bool) -> i32 {
    let Some(gatekeeper) = &farm.gatekeeper else {
        say!("--usage needs a gatekeeper (set MEXEC_GATEKEEPER or --gatekeeper)");
        return EXIT_MEXEC_FAILURE;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let reply = runtime.block_on(async {
        let channel = mexec_common::dial::dial(connector, gatekeeper).await?;
        GatekeeperClient::new(channel)
            .usage(UsageRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_owned())
    });
    runtime.shutdown_background();
    match reply {
        Ok(reply) if json => {
            println!("{:#}", usage_json(&reply));
            0
        }
        Ok(reply) => {
            print!("{}", usage_table(&reply));
            0
        }
        Err(err) => {
            say!("gatekeeper {} unreachable: {err}", gatekeeper.authority());
            1
        }
    }
}

/// The rows as JSON: `{"rows": [{"window", "user", "build_id", ...}]}`.
pub fn usage_json(reply: &UsageReply) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = reply
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "window": r.window,
                "user": r.user,
                "build_id": r.build_id,
                "jobs": r.jobs,
                "slot_seconds": r.slot_seconds,
                "cpu_seconds": r.cpu_seconds,
                "queue_wait_seconds": r.queue_wait_seconds,
            })
        })
        .collect();
    serde_json::json!({ "rows": rows })
}

/// One block per window; each user's total, then its builds indented.
pub fn usage_table(reply: &UsageReply) -> String {
    let mut out = String::new();
    for window in ["hour", "day", "week"] {
        out.push_str(&format!(
            "LAST {:<6} {:>8} {:>12} {:>12} {:>12}\n",
            window.to_uppercase(),
            "JOBS",
            "SLOT-S",
            "CPU-S",
            "WAIT-S"
        ));
        let rows: Vec<_> = reply.rows.iter().filter(|r| r.window == window).collect();
        if rows.is_empty() {
            out.push_str("  (no jobs)\n");
        }
        for r in rows {
            let name = if r.build_id.is_empty() {
                r.user.clone()
            } else {
                format!("  build {}", r.build_id)
            };
            out.push_str(&format!(
                "{:<12} {:>8} {:>12.1} {:>12.1} {:>12.1}\n",
                name, r.jobs, r.slot_seconds, r.cpu_seconds, r.queue_wait_seconds
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mexec_proto::v1::UsageRow;

    #[test]
    fn the_table_shows_users_then_their_builds_per_window() {
        let reply = UsageReply {
            rows: vec![
                UsageRow {
                    window: "hour".into(),
                    user: "alice".into(),
                    jobs: 3,
                    slot_seconds: 1.5,
                    ..UsageRow::default()
                },
                UsageRow {
                    window: "hour".into(),
                    user: "alice".into(),
                    build_id: "b1".into(),
                    jobs: 3,
                    ..UsageRow::default()
                },
            ],
        };
        let table = usage_table(&reply);
        assert!(
            table.contains("alice               3          1.5"),
            "{table}"
        );
        assert!(table.contains("  build b1"), "{table}");
        assert!(table.contains("LAST DAY"), "{table}");
        assert_eq!(usage_json(&reply)["rows"][0]["jobs"], 3);
    }
}
