//! Per-user accounting in SQLite (rusqlite, with its bundled SQLite): one
//! row per ended job, summed per user and per build over the last hour,
//! day and week. One thread owns the connection, so the async handlers
//! never wait on the disk; rows older than `KEEP` are pruned, and at most
//! `MAX_ROWS` are kept, so the file stays bounded.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use mexec_proto::v1::UsageRow;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

/// Rows kept: a week's windows and a day to spare.
const KEEP: Duration = Duration::from_secs(8 * 24 * 3600);
/// The most rows kept, whatever their age (about 150 MiB of file).
pub const MAX_ROWS: i64 = 1_000_000;
/// Pruning runs after this many rows written.
const PRUNE_EVERY: u64 = 1000;
/// The windows reported, by name and length.
pub const WINDOWS: [(&str, u64); 3] = [("hour", 3600), ("day", 86_400), ("week", 604_800)];

/// One ended job, as accounted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRow {
    pub ended_unix_ms: u64,
    pub user: String,
    pub build_id: String,
    pub node: String,
    pub program: String,
    pub outcome: String,
    pub status: i32,
    pub slot_seconds: f64,
    pub cpu_seconds: f64,
    pub queue_wait_seconds: f64,
}

enum Command {
    Record(JobRow),
    Usage(u64, oneshot::Sender<Vec<UsageRow>>),
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    #[error("accounting database {path}")]
    Database {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("accounting database: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// The handle the gatekeeper writes and asks through.
#[derive(Debug, Clone)]
pub struct Accounting {
    commands: mpsc::Sender<Command>,
}

impl Accounting {
    /// Opens (or creates) the database at `path`; `None` keeps it in
    /// memory, gone at a restart.
    pub fn open(path: Option<&Path>) -> Result<Accounting, AccountingError> {
        let shown = path.map_or(":memory:".to_owned(), |p| p.display().to_string());
        let failed = |source| AccountingError::Database {
            path: shown.clone(),
            source,
        };
        let conn = match path {
            Some(path) => Connection::open(path),
            None => Connection::open_in_memory(),
        }
        .map_err(failed)?;
        conn.execute_batch(SCHEMA).map_err(failed)?;
        prune(&conn, mexec_common::clock::now_ms()).map_err(failed)?;
        let (commands, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("accounting".into())
            .spawn(move || keep(conn, rx))
            .map_err(AccountingError::Thread)?;
        Ok(Accounting { commands })
    }

    /// Records one ended job (written in the background).
    pub fn record(&self, row: JobRow) {
        let _ = self.commands.send(Command::Record(row));
    }

    /// Usage per user and per build over each window ending now.
    pub async fn usage(&self) -> Vec<UsageRow> {
        let (tx, rx) = oneshot::channel();
        let now = mexec_common::clock::now_ms();
        if self.commands.send(Command::Usage(now, tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    ended_unix_ms INTEGER NOT NULL,
    user TEXT NOT NULL,
    build_id TEXT NOT NULL,
    node TEXT NOT NULL,
    program TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    slot_seconds REAL NOT NULL,
    cpu_seconds REAL NOT NULL,
    queue_wait_seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_end ON jobs (ended_unix_ms);
";

/// The thread that owns the connection: writes rows in batches (one
/// transaction for whatever is waiting), answers queries, prunes.
fn keep(mut conn: Connection, commands: mpsc::Receiver<Command>) {
    let mut written = 0u64;
    while let Ok(first) = commands.recv() {
        let mut rows = Vec::new();
        let mut asked = Vec::new();
        for command in std::iter::once(first).chain(commands.try_iter()) {
            match command {
                Command::Record(row) => rows.push(row),
                Command::Usage(now, reply) => asked.push((now, reply)),
            }
        }
        if !rows.is_empty() {
            if let Err(err) = insert(&mut conn, &rows) {
                tracing::warn!(%err, rows = rows.len(), "accounting: rows not written");
            }
            written += rows.len() as u64;
            if written >= PRUNE_EVERY {
                written = 0;
                if let Err(err) = prune(&conn, mexec_common::clock::now_ms()) {
                    tracing::warn!(%err, "accounting: pruning failed");
                }
            }
        }
        for (now, reply) in asked {
            let _ = reply.send(usage(&conn, now).unwrap_or_else(|err| {
                tracing::warn!(%err, "accounting: usage query failed");
                Vec::new()
            }));
        }
    }
}

fn insert(conn: &mut Connection, rows: &[JobRow]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO jobs (ended_unix_ms, user, build_id, node, program, outcome, status, \
             slot_seconds, cpu_seconds, queue_wait_seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for r in rows {
            insert.execute(params![
                r.ended_unix_ms as i64,
                r.user,
                r.build_id,
                r.node,
                r.program,
                r.outcome,
                r.status,
                r.slot_seconds,
                r.cpu_seconds,
                r.queue_wait_seconds
            ])?;
        }
    }
    tx.commit()
}

/// Drops rows past `KEEP`, and the oldest beyond `MAX_ROWS`.
pub fn prune(conn: &Connection, now_ms: u64) -> rusqlite::Result<()> {
    let oldest = now_ms.saturating_sub(KEEP.as_millis() as u64) as i64;
    conn.execute("DELETE FROM jobs WHERE ended_unix_ms < ?1", [oldest])?;
    conn.execute(
        "DELETE FROM jobs WHERE id <= (SELECT MAX(id) FROM jobs) - ?1",
        [MAX_ROWS],
    )?;
    Ok(())
}

fn usage(conn: &Connection, now_ms: u64) -> rusqlite::Result<Vec<UsageRow>> {
    let mut rows = Vec::new();
    let mut by_user = conn.prepare_cached(
        "SELECT user, '', COUNT(*), SUM(slot_seconds), SUM(cpu_seconds), SUM(queue_wait_seconds) \
         FROM jobs WHERE ended_unix_ms >= ?1 GROUP BY user ORDER BY user",
    )?;
    let mut by_build = conn.prepare_cached(
        "SELECT user, build_id, COUNT(*), SUM(slot_seconds), SUM(cpu_seconds), SUM(queue_wait_seconds) \
         FROM jobs WHERE ended_unix_ms >= ?1 GROUP BY user, build_id ORDER BY user, build_id",
    )?;
    for (window, secs) in WINDOWS {
        let since = now_ms.saturating_sub(secs * 1000) as i64;
        for query in [&mut by_user, &mut by_build] {
            let found = query.query_map([since], |r| {
                Ok(UsageRow {
                    window: window.to_owned(),
                    user: r.get(0)?,
                    build_id: r.get(1)?,
                    jobs: r.get::<_, i64>(2)? as u64,
                    slot_seconds: r.get(3)?,
                    cpu_seconds: r.get(4)?,
                    queue_wait_seconds: r.get(5)?,
                })
            })?;
            for row in found {
                rows.push(row?);
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, build: &str, ended: u64, slot: f64) -> JobRow {
        JobRow {
            ended_unix_ms: ended,
            user: user.into(),
            build_id: build.into(),
            slot_seconds: slot,
            cpu_seconds: slot / 2.0,
            ..JobRow::default()
        }
    }

    #[test]
    fn usage_sums_per_user_and_build_within_each_window() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let now = 10_000_000_000;
        let rows = [
            row("alice", "b1", now - 1000, 2.0),
            row("alice", "b2", now - 2000, 3.0),
            // Two hours ago: in the day, not the hour.
            row("alice", "b1", now - 7_200_000, 5.0),
            row("bob", "b3", now - 10, 1.0),
        ];
        insert(&mut conn, &rows).unwrap();
        let usage = usage(&conn, now).unwrap();
        let find = |w: &str, u: &str, b: &str| {
            usage
                .iter()
                .find(|r| r.window == w && r.user == u && r.build_id == b)
                .cloned()
        };
        let hour = find("hour", "alice", "").unwrap();
        assert_eq!((hour.jobs, hour.slot_seconds), (2, 5.0));
        assert_eq!(find("day", "alice", "").unwrap().jobs, 3);
        assert_eq!(find("day", "alice", "b1").unwrap().slot_seconds, 7.0);
        assert_eq!(find("hour", "bob", "b3").unwrap().cpu_seconds, 0.5);
    }

    #[test]
    fn pruning_drops_old_rows_and_bounds_the_count() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let now = 10_000_000_000;
        let old = now - KEEP.as_millis() as u64 - 1;
        insert(&mut conn, &[row("a", "", old, 1.0), row("a", "", now, 1.0)]).unwrap();
        prune(&conn, now).unwrap();
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1);
    }
}
