//! What the executor reads from /proc, in one place: the node's memory and
//! load average, and each process's group, resident size and children.
//! Readers return `None` (or nothing) where a file is missing or odd: a
//! process can exit between listing and reading, and a kernel may lack a
//! file; callers then fall back or count nothing.

use std::path::Path;

/// A field of /proc/meminfo, in bytes ("MemTotal", "MemAvailable").
pub fn meminfo_bytes(field: &str) -> Option<u64> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?, field)
}

/// A field of a /proc/meminfo text, in bytes (the file counts in KiB).
pub fn parse_meminfo(meminfo: &str, field: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        (name == field).then_some(rest)
    })?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The one-minute load average, from /proc/loadavg (where `getloadavg`
/// reads it too).
pub fn load_average_1m() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Resident pages of process `pid`, from /proc/PID/statm (second field).
pub fn resident_pages(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Process group and resident pages of process `pid`, from /proc/PID/stat.
pub fn group_and_resident_pages(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The process group and resident pages from a /proc/PID/stat line.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name is in parentheses and may hold spaces; fields are
    // counted after its closing parenthesis: state is 3, pgrp 5, rss 24.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let pgrp = fields.get(2)?.parse().ok()?;
    let rss = fields.get(21)?.parse().ok()?;
    Some((pgrp, rss))
}

/// Whether this kernel lists children (/proc/PID/task/TID/children).
pub fn lists_children() -> bool {
    Path::new("/proc/thread-self/children").exists()
}

/// The children of every thread of process `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    found
}

/// Tasks runnable now on the whole machine (`procs_running` of /proc/stat,
/// the figure the load average is made from, unaveraged).
pub fn runnable_tasks() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("procs_running "))?
        .trim()
        .parse()
        .ok()
}

/// Runnable tasks (threads in state R) of process `root` and all its
/// descendants; the tree is followed through the children lists, so this
/// needs `lists_children`.
pub fn runnable_tasks_in_tree(root: u32) -> u32 {
    let mut runnable = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if stat_state(&stat) == Some('R') {
                runnable += 1;
            }
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    runnable
}

/// The state letter of a /proc/PID/stat line (R running, S sleeping, ...).
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Every process of the node, by pid.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// The size of a memory page, which statm and stat count in.
pub fn page_size() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => size as u64,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "1234 (a b) c) S 1 1234 1234 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 5 1000000 321 18446744073709551615";
        assert_eq!(parse_stat(line), Some((1234, 321)));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own).is_some_and(|(_, rss)| rss > 0));
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal: 100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(parse_meminfo(text, "MemAvailable"), Some(2048 * 1024));
        assert_eq!(parse_meminfo(text, "MemTotal"), Some(100 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n", "MemAvailable"), None);
        assert!(meminfo_bytes("MemTotal").is_some_and(|total| total > 0));
    }

    #[test]
    fn this_process_is_listed_with_its_group_and_size() {
        let me = std::process::id();
        assert!(pids().contains(&me));
        assert!(resident_pages(me).is_some_and(|pages| pages > 0));
        assert!(group_and_resident_pages(me).is_some());
        assert!(load_average_1m().is_some_and(|load| load >= 0.0));
        assert!(page_size() >= 4096);
    }

    #[test]
    fn runnable_tasks_count_the_reader_itself() {
        assert!(runnable_tasks().is_some_and(|n| n >= 1));
        if lists_children() {
            assert!(runnable_tasks_in_tree(std::process::id()) >= 1);
        }
        assert_eq!(stat_state("7 (a) b) R 1 2"), Some('R'));
    }
}
