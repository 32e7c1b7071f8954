//! Limits on what one job may ask for and use.
//!
//! Two kinds: the *request* limits bound what a client may send (argv,
//! environment), checked before admission so a hostile request costs the
//! node nothing; the *job* limits bound what a running job may use
//! (wall-clock and CPU time, memory, output, open files). A job that runs
//! over one is killed and its exit names the limit.

use std::io;
use std::time::Duration;

use mexec_proto::v1::JobSpec;

use super::error::JobError;

/// The most arguments a job may have.
pub const MAX_ARGS: usize = 32 * 1024;
/// The most bytes argv may hold in all (Linux allows about 2 MiB for argv
/// and environment together; real link lines stay well under this).
pub const MAX_ARGV_BYTES: usize = 512 * 1024;
/// The most environment entries a job may have.
pub const MAX_ENV_ENTRIES: usize = 4096;
/// The most bytes the environment may hold in all.
pub const MAX_ENV_BYTES: usize = 512 * 1024;
/// The longest working directory path.
pub const MAX_PATH_BYTES: usize = 4096;
/// The largest gRPC message a daemon decodes: a job spec at its limits fits.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// Checks the request's sizes against the request limits.
pub fn check_request(spec: &JobSpec) -> Result<(), JobError> {
    let too_big = |what: &str, size: usize, limit: usize| {
        Err(JobError::TooLarge(format!(
            "{what} is {size}, over the limit of {limit}"
        )))
    };
    if spec.argv.len() > MAX_ARGS {
        return too_big("the argument count", spec.argv.len(), MAX_ARGS);
    }
    let argv_bytes: usize = spec.argv.iter().map(|a| a.len() + 1).sum();
    if argv_bytes > MAX_ARGV_BYTES {
        return too_big("argv (bytes)", argv_bytes, MAX_ARGV_BYTES);
    }
    if spec.env.len() > MAX_ENV_ENTRIES {
        return too_big("the environment (entries)", spec.env.len(), MAX_ENV_ENTRIES);
    }
    let env_bytes: usize = spec
        .env
        .iter()
        .map(|v| v.name.len() + v.value.len() + 2)
        .sum();
    if env_bytes > MAX_ENV_BYTES {
        return too_big("the environment (bytes)", env_bytes, MAX_ENV_BYTES);
    }
    if spec.cwd.len() > MAX_PATH_BYTES {
        return too_big(
            "the working directory (bytes)",
            spec.cwd.len(),
            MAX_PATH_BYTES,
        );
    }
    Ok(())
}

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
    /// stdin bytes per second the node reads from the client.
    pub stdin_bytes_per_sec: Option<u64>,
}

impl Default for JobLimits {
    /// Safe defaults: a day of wall-clock time, three quarters of the
    /// node's memory, 1 GiB of output, 4096 open files, 64 MiB/s of stdin.
    fn default() -> Self {
        JobLimits {
            wall: Some(Duration::from_secs(24 * 3600)),
            cpu: None,
            memory_bytes: physical_memory().map(|total| total / 4 * 3),
            address_space_bytes: None,
            output_bytes: Some(1 << 30),
            open_files: Some(4096),
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
}

impl Exceeded {
    /// The name in `Exit.limit`.
    pub fn name(&self) -> &'static str {
        match self {
            Exceeded::Wall(_) => "wall-clock",
            Exceeded::Cpu(_) => "cpu",
            Exceeded::Memory(_) => "memory",
            Exceeded::Output(_) => "output",
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
        }
    }
}

/// The resource limits a job's processes start with, prepared before the
/// fork so that the child only calls `setrlimit` (async-signal-safe).
#[derive(Debug, Clone, Copy)]
pub struct Rlimits {
    cpu: Option<libc::rlimit>,
    address_space: Option<libc::rlimit>,
    open_files: Option<libc::rlimit>,
}

/// Extra CPU seconds between SIGXCPU (the soft limit) and SIGKILL.
const CPU_GRACE_SECS: u64 = 2;

impl Rlimits {
    /// The rlimits for `limits`, never above what this daemon may grant.
    pub fn for_job(limits: &JobLimits) -> Rlimits {
        let capped = |resource, soft: u64, hard: u64| {
            let current = current_hard(resource);
            libc::rlimit {
                rlim_cur: soft.min(current) as libc::rlim_t,
                rlim_max: hard.min(current) as libc::rlim_t,
            }
        };
        Rlimits {
            cpu: limits.cpu.map(|cpu| {
                let secs = cpu.as_secs().max(1);
                capped(libc::RLIMIT_CPU, secs, secs + CPU_GRACE_SECS)
            }),
            address_space: limits
                .address_space_bytes
                .map(|bytes| capped(libc::RLIMIT_AS, bytes, bytes)),
            open_files: limits.open_files.map(|n| capped(libc::RLIMIT_NOFILE, n, n)),
        }
    }

    /// Applies the limits to the calling process (in the forked child).
    pub fn apply(&self) -> io::Result<()> {
        for (resource, limit) in [
            (libc::RLIMIT_CPU, self.cpu),
            (libc::RLIMIT_AS, self.address_space),
            (libc::RLIMIT_NOFILE, self.open_files),
        ] {
            if let Some(limit) = limit {
                // SAFETY: setrlimit reads the struct we pass and nothing else.
                if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

fn current_hard(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return u64::MAX;
    }
    limit.rlim_max
}

/// Whether a job that died this way ran into its CPU limit: the kernel
/// sends SIGXCPU at the soft limit and SIGKILL at the hard one.
pub fn hit_cpu_limit(limits: &JobLimits, signal: i32, cpu_used: Duration) -> Option<Exceeded> {
    let limit = limits.cpu?;
    let by_kernel = signal == libc::SIGXCPU || (signal == libc::SIGKILL && cpu_used >= limit);
    by_kernel.then_some(Exceeded::Cpu(limit))
}

/// Total memory of this node, from /proc/meminfo.
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mexec_proto::v1::EnvVar;

    fn spec() -> JobSpec {
        JobSpec {
            argv: vec!["true".into()],
            cwd: "/tmp".into(),
            ..JobSpec::default()
        }
    }

    #[test]
    fn requests_over_the_size_limits_are_refused_with_the_limit_named() {
        assert!(check_request(&spec()).is_ok());
        let mut big = spec();
        big.argv.push(vec![b'x'; 1 << 20].into());
        let err = check_request(&big).unwrap_err().to_string();
        assert!(
            err.contains("argv (bytes)") && err.contains("524288"),
            "{err}"
        );
        let mut many = spec();
        many.env = (0..10_000)
            .map(|i| EnvVar {
                name: format!("V{i}").into_bytes().into(),
                value: "1".into(),
            })
            .collect();
        let err = check_request(&many).unwrap_err().to_string();
        assert!(err.contains("environment (entries) is 10000"), "{err}");
    }

    #[test]
    fn cpu_limit_is_recognised_from_the_signal() {
        let limits = JobLimits {
            cpu: Some(Duration::from_secs(1)),
            ..JobLimits::default()
        };
        assert_eq!(
            hit_cpu_limit(&limits, libc::SIGXCPU, Duration::ZERO),
            Some(Exceeded::Cpu(Duration::from_secs(1)))
        );
        assert_eq!(hit_cpu_limit(&limits, libc::SIGKILL, Duration::ZERO), None);
        assert_eq!(
            hit_cpu_limit(&JobLimits::default(), libc::SIGXCPU, Duration::ZERO),
            None
        );
    }
}
