//! One JSON line per job, appended to `MEXEC_JOBLOG`, for scripts, demos
//! and build summaries. Lines are written with one `write` on a file opened
//! for appending, so concurrent clients do not interleave.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

/// Where and how one job ran.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub job_id: &'a str,
    pub program: &'a str,
    /// The submitting user.
    pub user: &'a str,
    /// The node that ran it, or "local".
    pub node: &'a str,
    /// "remote", "local" or "failed".
    pub placed: &'a str,
    pub exit_code: i32,
    /// From the client's start to the job's end: `wait_ms` + `run_ms`.
    pub wall_ms: u64,
    /// Time before the job ran: placement, waiting for a lease or a slot
    /// (on the node's queue included), failed attempts and transfer.
    pub wait_ms: u64,
    /// The job's own run time on its node (all of `wall_ms` when local).
    pub run_ms: u64,
    /// What a compile writes (its `-o` file), when it names one.
    pub target: Option<String>,
    /// CPU time (user + system) the job used on its node; 0 when local.
    pub cpu_ms: u64,
    /// When the job ended, in milliseconds since the Unix epoch.
    pub finished_unix_ms: u64,
    /// Attempts that failed before the one that counted.
    pub retries: u32,
    /// "agent" when the build host's agent ran the job, else why `mexec`
    /// ran it directly ("MEXEC_AGENT=0", or what was wrong with the agent).
    pub route: &'a str,
}

/// The output file a compiler's `argv` names (`-o FILE` or `-oFILE`).
pub fn target(argv: &[std::ffi::OsString]) -> Option<String> {
    let mut args = argv.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        if arg == "-o" {
            return args.next().map(|a| a.into_owned());
        }
        if let Some(file) = arg.strip_prefix("-o").filter(|f| !f.is_empty()) {
            return Some(file.to_owned());
        }
    }
    None
}

/// Appends `entry` to `path`; a log that cannot be written is reported
/// once on stderr and otherwise ignored (the job's result matters more).
pub fn append(path: &Path, entry: &Entry<'_>) {
    let Ok(mut line) = serde_json::to_vec(entry) else {
        return;
    };
    line.push(b'\n');
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(&line));
    if let Err(err) = result {
        crate::say!("cannot append to job log {}: {err}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_o_file() {
        let argv = |args: &[&str]| args.iter().map(Into::into).collect::<Vec<_>>();
        assert_eq!(
            target(&argv(&["gcc", "-c", "a.c", "-o", "obj/a.o"])).as_deref(),
            Some("obj/a.o")
        );
        assert_eq!(
            target(&argv(&["gcc", "-oa.o", "a.c"])).as_deref(),
            Some("a.o")
        );
        assert_eq!(target(&argv(&["sh", "-c", "true"])), None);
    }
}
