//! What a running job may use (wall-clock and CPU time, memory, output,
//! open files, processes), and how each limit is applied: rlimits set in the child
//! before exec, the rest watched by the job and the memory watcher. A job
//! that runs over one is killed and its exit names the limit. (What a
//! client may *send* is bounded before admission: `request_limits`.)

use std::io;
use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;

use super::procfs;

/// What a running job may use; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Wall-clock time; the client's own timeout may only shorten it.
    pub wall: Option<Duration>,
    /// CPU time of each process of the job (RLIMIT_CPU).
    pub cpu: Option<Duration>,
    /// Resident memory of the whole job (its process group), watched.
    pub memory_bytes: Option<u64>,
    /// Address space of each process (RLIMIT_AS): a hard stop for a single
    /// runaway allocation. Off by default: sanitizers and some runtimes
    /// reserve far more address space than they use.
    pub address_space_bytes: Option<u64>,
    /// stdout and stderr together.
    pub output_bytes: Option<u64>,
    /// Open files of each process (RLIMIT_NOFILE).
    pub open_files: Option<u64>,
    /// Processes of the whole job at once (its cgroup's `pids.max`).
    pub processes: Option<u64>,
    /// stdin bytes per second the node reads from the client.
    pub stdin_bytes_per_sec: Option<u64>,
}

impl Default for JobLimits {
    /// Safe defaults: a day of wall-clock time, three quarters of the
    /// node's memory, 1 GiB of output, 4096 open files, 256 processes, 64 MiB/s of stdin.
    fn default() -> Self {
        JobLimits {
            wall: Some(Duration::from_secs(24 * 3600)),
            cpu: None,
            memory_bytes: physical_memory().map(|total| total / 4 * 3),
            address_space_bytes: None,
            output_bytes: Some(1 << 30),
            open_files: Some(4096),
            // A compile is a handful of processes and a test script a few
            // dozen; a fork bomb is stopped long before it hurts the node.
            processes: Some(256),
            stdin_bytes_per_sec: Some(64 << 20),
        }
    }
}

/// Which limit a job ran over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Wall(Duration),
    Cpu(Duration),
    Memory(u64),
    Output(u64),
    /// A fork failed at this many processes.
    Processes(u64),
}

impl Exceeded {
    /// The name in `Exit.limit`.
    pub fn name(&self) -> &'static str {
        match self {
            Exceeded::Wall(_) => "wall-clock",
            Exceeded::Cpu(_) => "cpu",
            Exceeded::Memory(_) => "memory",
            Exceeded::Output(_) => "output",
            Exceeded::Processes(_) => "processes",
        }
    }

    /// The sentence in `Exit.error`.
    pub fn message(&self) -> String {
        match self {
            Exceeded::Wall(limit) => {
                format!("killed: wall-clock time limit of {limit:?} exceeded")
            }
            Exceeded::Cpu(limit) => format!("killed: CPU time limit of {limit:?} exceeded"),
            Exceeded::Memory(bytes) => format!(
                "killed: memory limit of {} MiB exceeded",
                bytes.div_ceil(1 << 20)
            ),
            Exceeded::Output(bytes) => format!("killed: output limit of {bytes} bytes exceeded"),
            Exceeded::Processes(max) => {
                format!("failed: process limit of {max} reached (a fork was refused)")
            }
        }
    }
}

/// The resource limits a job's processes start with, prepared before the
/// fork so that the child only calls `setrlimit` (async-signal-safe; the
/// nix wrapper allocates nothing).
#[derive(Debug, Clone, Copy)]
pub struct Rlimits {
    /// Each limit as (soft, hard).
    cpu: Option<(u64, u64)>,
    address_space: Option<(u64, u64)>,
    open_files: Option<(u64, u64)>,
}

/// Extra CPU seconds between SIGXCPU (the soft limit) and SIGKILL.
const CPU_GRACE_SECS: u64 = 2;

impl Rlimits {
    /// The rlimits for `limits`, never above what this daemon may grant.
    pub fn for_job(limits: &JobLimits) -> Rlimits {
        let capped = |resource, soft: u64, hard: u64| {
            // An unreadable limit is taken as unlimited, as the kernel would.
            let current = getrlimit(resource).map_or(u64::MAX, |(_, hard)| hard);
            (soft.min(current), hard.min(current))
        };
        Rlimits {
            cpu: limits.cpu.map(|cpu| {
                let secs = cpu.as_secs().max(1);
                capped(Resource::RLIMIT_CPU, secs, secs + CPU_GRACE_SECS)
            }),
            address_space: limits
                .address_space_bytes
                .map(|bytes| capped(Resource::RLIMIT_AS, bytes, bytes)),
            open_files: limits
                .open_files
                .map(|n| capped(Resource::RLIMIT_NOFILE, n, n)),
        }
    }

    /// Applies the limits to the calling process (in the forked child).
    pub fn apply(&self) -> io::Result<()> {
        for (resource, limit) in [
            (Resource::RLIMIT_CPU, self.cpu),
            (Resource::RLIMIT_AS, self.address_space),
            (Resource::RLIMIT_NOFILE, self.open_files),
        ] {
            if let Some((soft, hard)) = limit {
                setrlimit(resource, soft, hard)?;
            }
        }
        Ok(())
    }
}

/// Whether a job that died this way ran into its CPU limit: the kernel
/// sends SIGXCPU at the soft limit and SIGKILL at the hard one.
pub fn hit_cpu_limit(limits: &JobLimits, signal: i32, cpu_used: Duration) -> Option<Exceeded> {
    let limit = limits.cpu?;
    let by_kernel =
        signal == Signal::SIGXCPU as i32 || (signal == Signal::SIGKILL as i32 && cpu_used >= limit);
    by_kernel.then_some(Exceeded::Cpu(limit))
}

/// Total memory of this node.
pub fn physical_memory() -> Option<u64> {
    procfs::meminfo_bytes("MemTotal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_limit_is_recognised_from_the_signal() {
        let limits = JobLimits {
            cpu: Some(Duration::from_secs(1)),
            ..JobLimits::default()
        };
        assert_eq!(
            hit_cpu_limit(&limits, Signal::SIGXCPU as i32, Duration::ZERO),
            Some(Exceeded::Cpu(Duration::from_secs(1)))
        );
        assert_eq!(
            hit_cpu_limit(&limits, Signal::SIGKILL as i32, Duration::ZERO),
            None
        );
        assert_eq!(
            hit_cpu_limit(
                &JobLimits::default(),
                Signal::SIGXCPU as i32,
                Duration::ZERO
            ),
            None
        );
    }
}
