//! Finding the Ninja build a job belongs to. Ninja starts every command
//! in a process group of its own, so the process group, which tells make
//! builds apart, would make each of its jobs a build; the Ninja process
//! above us tells them apart instead. Linux only (`/proc`); elsewhere no
//! Ninja is found and the process group stands.

use std::path::Path;

/// The names Ninja's implementations run under (samurai is `samu`).
const NINJAS: [&str; 2] = ["ninja", "samu"];

/// The Ninja that started the process group led by `leader`: its pid and
/// start time (clock ticks after boot), which together name one run even
/// when a later Ninja gets the same pid. Ninja gives each command (its
/// `/bin/sh -c`) a group of its own, so Ninja is the leader's parent,
/// whatever wrappers (ccache, a script, a make) stand between it and us;
/// under make the leader is make or a shell above it. Two reads of /proc,
/// on every job, however deep the process tree.
pub fn ninja_above_group(leader: u32) -> Option<(u32, u64)> {
    ninja_above_in(Path::new("/proc"), leader)
}

fn ninja_above_in(proc_root: &Path, leader: u32) -> Option<(u32, u64)> {
    let parent = Stat::of(proc_root, leader)?.ppid;
    if parent <= 1 {
        return None;
    }
    let stat = Stat::of(proc_root, parent)?;
    NINJAS
        .contains(&stat.comm.as_str())
        .then_some((parent, stat.start_time))
}

/// The fields of `/proc/PID/stat` we need.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    ppid: u32,
    start_time: u64,
}

impl Stat {
    fn of(proc_root: &Path, pid: u32) -> Option<Stat> {
        let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
        Stat::parse(&text)
    }

    /// `PID (COMM) STATE PPID ...`: the name may hold spaces and
    /// parentheses, so it ends at the last `)`; the start time is the 22nd
    /// field.
    fn parse(text: &str) -> Option<Stat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_owned();
        let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
        Some(Stat {
            comm,
            ppid: rest.get(1)?.parse().ok()?,
            start_time: rest.get(19)?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_parses_with_an_awkward_name() {
        let line = "4242 (my (odd) cc) S 4200 4242 4200 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 \
                    1 0 987654 1000000 200 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                comm: "my (odd) cc".into(),
                ppid: 4200,
                start_time: 987654,
            })
        );
        assert_eq!(Stat::parse("garbage"), None);
    }
}
