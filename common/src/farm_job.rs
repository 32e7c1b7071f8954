//! The mark a node sets in every job's environment. A `mexec` that a job
//! starts (a Makefile's `CC=mexec gcc` under `mexec make`, a compiler
//! wrapper that calls `mexec`) sees it and runs its command right there:
//! the job already holds a slot on a farm node, and a second placement
//! would take another slot for the same work, and wait forever for one on
//! a farm whose every slot is held by such outer jobs.

use std::ffi::{OsStr, OsString};

/// The variable; its value is the outer job's id.
pub const VARIABLE: &str = "MEXEC_FARM_JOB";

/// The outer job's id when `env` is a farm job's environment.
pub fn outer_job(env: &[(OsString, OsString)]) -> Option<&OsStr> {
    env.iter()
        .rev()
        .find(|(name, value)| name == VARIABLE && !value.is_empty())
        .map(|(_, value)| value.as_os_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_set_mark_counts_and_the_last_setting_wins() {
        let var = |n: &str, v: &str| (OsString::from(n), OsString::from(v));
        assert_eq!(outer_job(&[var("PATH", "/bin")]), None);
        assert_eq!(outer_job(&[var(VARIABLE, "")]), None);
        assert_eq!(
            outer_job(&[var(VARIABLE, "a"), var(VARIABLE, "b")]),
            Some(OsStr::new("b"))
        );
    }
}
