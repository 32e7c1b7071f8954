//! The agent process: `mexec` started again with `MEXEC_AGENT_SERVE` set,
//! detached from the build (its own session, no descriptors of the `mexec`
//! that started it). It holds an exclusive lock for its life, so of the
//! `mexec` processes that start one at once a single agent stays; it takes
//! only connections of its own user (SO_PEERCRED), runs each job in a task
//! of its own, and exits once it has had no job for the idle period
//! (`MEXEC_AGENT_IDLE_SECS`, default 60), or its socket is gone and its
//! jobs have ended.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

use super::place::Place;
use super::session::{self, Shared};

const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// How often the agent looks at its idle time and its socket.
const TICK: Duration = Duration::from_millis(500);

/// The agent's `main`; returns the process's exit code.
pub fn main() -> i32 {
    close_inherited_descriptors();
    // Out of the build's process group and terminal: a ^C to the build
    // reaches the `mexec` processes, which forward it to their jobs.
    let _ = nix::unistd::setsid();
    let place = match Place::for_this_build() {
        Ok(place) => place,
        Err(_) => return 1,
    };
    if crate::placement::SharedState::create_private_dir(&place.dir).is_err() {
        return 1;
    }
    let Some(_lock) = take_lock(&place) else {
        // Another agent has it: the `mexec` that started us reaches that one.
        return 0;
    };
    let _ = std::fs::remove_file(&place.socket);
    let listener = match std::os::unix::net::UnixListener::bind(&place.socket) {
        Ok(listener) => listener,
        Err(_) => return 1,
    };
    crate::placement::SharedState::keep_in_memory();
    // One thread: a job costs the agent microseconds of its own work, and
    // the wake-ups and hand-overs between worker threads cost more than
    // that. Blocking work (MUNGE) goes to the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(_) => return 1,
    };
    runtime.block_on(serve(listener, &place));
    // Jobs of `mexec` processes that connected just now get a closed socket
    // and run directly.
    runtime.shutdown_background();
    0
}

/// Accepts jobs until idle. An agent whose socket is gone (removed with
/// its directory, or by a `mexec` that found it hung and started another)
/// takes no more jobs and exits once its running ones have ended.
async fn serve(listener: std::os::unix::net::UnixListener, place: &Place) {
    let Ok(()) = listener.set_nonblocking(true) else {
        return;
    };
    let Ok(listener) = UnixListener::from_std(listener) else {
        return;
    };
    let ours = socket_inode(place);
    let shared = Arc::new(Shared::new(place.build.clone()));
    let running = Arc::new(AtomicUsize::new(0));
    let idle_limit = idle_period();
    let mut idle_since = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    let mut listener = Some(listener);
    loop {
        tokio::select! {
            accepted = accept(&listener) => {
                if let Some(stream) = accepted {
                    let (shared, running) = (shared.clone(), running.clone());
                    running.fetch_add(1, Ordering::AcqRel);
                    // Boxed: a session's state is kilobytes, which the
                    // runtime would otherwise copy in and out of the task.
                    tokio::spawn(async move {
                        let _ = Box::pin(session::serve(stream, &shared)).await;
                        running.fetch_sub(1, Ordering::AcqRel);
                    });
                }
            }
            _ = tick.tick() => {
                let busy = running.load(Ordering::Acquire) > 0;
                if busy {
                    idle_since = Instant::now();
                }
                if listener.is_some() && socket_inode(place) != ours {
                    listener = None;
                }
                let retired = listener.is_none();
                if !busy && (retired || idle_since.elapsed() >= idle_limit) {
                    break;
                }
            }
        }
    }
    if listener.is_some() && socket_inode(place) == ours {
        let _ = std::fs::remove_file(&place.socket);
    }
}

/// The next connection of our own user; never, once retired.
async fn accept(listener: &Option<UnixListener>) -> Option<tokio::net::UnixStream> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    let (stream, _) = listener.accept().await.ok()?;
    let uid = nix::unistd::getuid().as_raw();
    stream
        .peer_cred()
        .is_ok_and(|peer| peer.uid() == uid)
        .then_some(stream)
}

/// The exclusive lock that makes this process the agent; the file says
/// the agent's pid.
fn take_lock(place: &Place) -> Option<Flock<std::fs::File>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&place.lock)
        .ok()?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
    let _ = lock.set_len(0);
    let _ = writeln!(lock, "{}", std::process::id());
    Some(lock)
}

fn socket_inode(place: &Place) -> Option<u64> {
    std::fs::symlink_metadata(&place.socket)
        .ok()
        .map(|meta| meta.ino())
}

fn idle_period() -> Duration {
    std::env::var("MEXEC_AGENT_IDLE_SECS")
        .ok()
        .and_then(|secs| secs.parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_IDLE)
}

/// Closes what the starting `mexec` inherited from make (its jobserver,
/// other pipes): the agent outlives the build and must not keep them open.
fn close_inherited_descriptors() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // The directory's own descriptor is among them, closed already.
        let _ = nix::unistd::close(fd);
    }
}
