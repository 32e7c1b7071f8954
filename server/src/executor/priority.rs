//! The CPU and I/O priority a job runs at. On a desktop node jobs take only
//! what the owner leaves: `SCHED_IDLE` (the kernel runs them only when no
//! normal task wants the CPU), nice 19 as well (what is left where
//! `SCHED_IDLE` is refused, and for a job that switches itself back to the
//! normal policy), and the idle I/O class (disk time only when nobody else
//! asks for it).

/// How a job is scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JobPriority {
    /// As the daemon itself: a node that belongs to the farm.
    #[default]
    Normal,
    /// The lowest CPU and I/O priority the system offers: a desktop node.
    Idle,
}

/// `ioprio_set`'s "which": one process (the calling one, with pid 0).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
/// The idle I/O scheduling class, shifted into place in the priority value.
const IOPRIO_CLASS_IDLE: libc::c_int = 3 << 13;

impl JobPriority {
    /// Sets the priority of the calling process; for the forked child
    /// before exec, so everything the job starts inherits it. Makes only
    /// async-signal-safe system calls and allocates nothing. Each step is
    /// best effort: lowering one's own priority needs no privilege, and a
    /// kernel without one of them still gets the others.
    pub fn apply(self) {
        if self == JobPriority::Normal {
            return;
        }
        // SAFETY: plain system calls on the calling process, with valid
        // arguments; `param` lives across the call.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            #[cfg(target_os = "linux")]
            {
                // Through libc: nix wraps neither sched_setscheduler nor
                // ioprio_set (glibc has no wrapper for the latter at all).
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
                libc::syscall(
                    libc::SYS_ioprio_set,
                    IOPRIO_WHO_PROCESS,
                    0,
                    IOPRIO_CLASS_IDLE,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calls run in a child, as the executor runs them, and the child
    /// sees itself at idle CPU and I/O priority.
    #[test]
    fn a_child_at_idle_priority_is_idle_for_cpu_and_io() {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("sh");
        command.args([
            "-c",
            "cat /proc/self/stat; ionice -p $$ 2>/dev/null || true",
        ]);
        // SAFETY: `apply` makes only async-signal-safe calls.
        unsafe {
            command.pre_exec(|| {
                JobPriority::Idle.apply();
                Ok(())
            });
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let stat = text.lines().next().unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // After the command name: nice is field 19 and policy field 41 of
        // the stat line, so 16 and 38 here.
        assert_eq!(fields[16], "19", "{stat}");
        assert_eq!(fields[38], libc::SCHED_IDLE.to_string(), "{stat}");
        if let Some(io) = text.lines().nth(1) {
            assert_eq!(io.trim(), "idle", "{text}");
        }
    }
}
