//! One job from admission to exit status, in steps: wait for a slot, start
//! the process (`Running::start`), supervise it until its leader exits or
//! the node kills its group (the client left, a limit or the timeout was
//! hit, a draining node gave up), `finish` it, which ends everything the
//! job held in the one safe order, and report the exit.
//!
//! Layout:
//! - `input`: the client's half of the stream: stdin and signals.
//! - `output`: pumping stdout and stderr into the response stream.
//! - `end`: how a job ended: the exit message, the log line, a failed start.

mod end;
mod input;
mod output;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mexec_proto::v1::{run_response, Accepted, Exit, Queued, RunRequest, RunResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Status, Streaming};

use super::admission::{SlotGuard, Ticket};
use super::error::JobError;
use super::group_keeper::KeptGroup;
use super::job_cgroup::JobCgroup;
use super::launch::Entry;
use super::limits::{Exceeded, JobLimits, Rlimits};
use super::memory::Watch;
use super::observe::Outcome;
use super::process;
use super::shared_tree;
use super::valid_job::ValidJob;
use super::NodeContext;
use end::{Ended, Kill};
use input::Input;
use output::Output;

pub use output::OUTPUT_QUEUE;

/// The response stream's sending half.
pub type Outbound = mpsc::Sender<Result<RunResponse, Status>>;

/// What the job's helper tasks tell its supervisor.
enum Control {
    /// The client asks for this signal to be delivered.
    Signal(i32),
    /// The client's stream broke.
    ClientGone,
    /// The job wrote more than its output limit.
    OutputLimit(u64),
}

/// Runs an admitted job to its end, reporting on `out`.
pub async fn run(
    ctx: Arc<NodeContext>,
    job: ValidJob,
    ticket: Ticket,
    inbound: Streaming<RunRequest>,
    out: Outbound,
) {
    let asked = Instant::now();
    let Some(slot) = take_slot(&ctx, ticket, &out).await else {
        ctx.observe.refused();
        return;
    };
    let refreshed = shared_tree::refresh(&job.cwd, &ctx.seen_names).await;
    if refreshed.stale > 0 {
        tracing::info!(
            job = %job.spec.job_id,
            names = refreshed.stale,
            "waited for stale entries in the working directory"
        );
    }
    let started_at = Instant::now();
    let started_wall = std::time::SystemTime::now();
    ctx.observe.started(&job, started_at.duration_since(asked));
    let mut running = match Running::start(&ctx, &job, slot, inbound, &out, started_at).await {
        Ok(running) => running,
        Err(err) => {
            let exit = end::start_failed(&ctx, &job, started_at, &err, &out).await;
            // A command not found or not runnable (127, 126) exits; a
            // working directory at fault is a refusal.
            let outcome = match exit {
                Some(_) => Outcome::exit_nonzero,
                None => Outcome::refused,
            };
            return ctx.observe.ended(&job, outcome, exit.as_ref(), 0);
        }
    };
    let written = running.output.written();
    let ended = running.supervise(&ctx, &job, &out).await;
    let killed = ended.killed;
    let exit = running.finish(ended, &ctx.limits).await;
    // Before the exit goes out: whoever reads the outputs next is told
    // they are ready the moment it arrives.
    if ctx.write_back_outputs {
        let back = shared_tree::write_back(&job.cwd, started_wall).await;
        tracing::info!(
            job = %job.spec.job_id,
            files = back.files,
            took_us = back.took.as_micros() as u64,
            "outputs written back"
        );
    }
    if refreshed.shared {
        shared_tree::remember(&job.cwd, &ctx.seen_names).await;
    }
    let outcome = end::outcome(killed, &exit);
    ctx.observe
        .ended(&job, outcome, Some(&exit), written.load(Ordering::Relaxed));
    end::report(&ctx, &job, started_at, killed, exit, &out).await;
}

/// A slot for the job: at once, or after answering `Queued` and waiting.
/// `None` when the node started draining or the client left meanwhile.
async fn take_slot(ctx: &NodeContext, ticket: Ticket, out: &Outbound) -> Option<SlotGuard> {
    let queue = match ticket {
        Ticket::Slot(slot) => return Some(slot),
        Ticket::Queued(queue) => queue,
    };
    let queued = Queued {
        node: ctx.name.clone(),
        queued: ctx.admission.counts().queued,
    };
    let _ = out
        .send(Ok(response(run_response::Msg::Queued(queued))))
        .await;
    tokio::select! {
        slot = queue.wait_for_slot() => match slot {
            Some(slot) => Some(slot),
            None => {
                let _ = out.send(Err(JobError::Draining.into_status(&ctx.name))).await;
                None
            }
        },
        // The client gave up while waiting: its place is freed on drop.
        _ = out.closed() => None,
    }
}

/// A started job and everything that lives only as long as it does, in the
/// order it must end: `finish` ends them so, and so does dropping a
/// `Running` that was never finished (its task cancelled), less the
/// draining of output nobody waits for.
struct Running {
    /// First: whatever the job left running is killed before anything
    /// else lets go of it.
    group: Group,
    /// Then the client's half: no more stdin or signals for a dead group.
    input: Input,
    /// Then the output the job wrote reaches the client.
    output: Output,
    /// Then the memory watcher forgets the group.
    memory: Option<Watch>,
    /// Last the slot, so the node counts the job until it is all gone.
    slot: SlotGuard,
    control: mpsc::UnboundedReceiver<Control>,
    started_at: Instant,
}

/// A job's process group and cgroup, killed when this is dropped, and
/// only then released from the group keeper.
struct Group {
    pgid: u32,
    /// Dropped after the group is killed: ends what left the group.
    cgroup: Option<JobCgroup>,
    _kept: Option<KeptGroup>,
}

impl Group {
    /// Whether a fork of the job failed at the process limit.
    fn hit_process_limit(&self) -> bool {
        self.cgroup
            .as_ref()
            .is_some_and(JobCgroup::hit_process_limit)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Runs before the fields drop, so the keeper lets go of the group
        // only once it is dead.
        process::kill_group(self.pgid);
    }
}

/// A task that is aborted when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Waits for the task to end by itself.
    async fn join(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Running {
    /// Starts the job's process, answers `Accepted`, and starts what feeds
    /// and watches it. On failure nothing runs and the slot is free again.
    async fn start(
        ctx: &NodeContext,
        job: &ValidJob,
        slot: SlotGuard,
        inbound: Streaming<RunRequest>,
        out: &Outbound,
        started_at: Instant,
    ) -> std::io::Result<Running> {
        let rlimits = Rlimits::for_job(&ctx.limits);
        let launch = process::launch(job, rlimits, ctx.priority)?;
        let (spawned, cgroup) = match &ctx.cgroups {
            Some(cgroups) => {
                let (spawned, cgroup) = cgroups.spawn(ctx.limits.processes, launch).await?;
                (spawned, Some(cgroup))
            }
            None => (launch.spawn(Entry::Inherited)?, None),
        };
        let started = process::started(spawned)?;
        let pid = started.pid;
        let group = Group {
            pgid: pid,
            cgroup,
            _kept: ctx.groups.as_ref().map(|keeper| keeper.keep(pid)),
        };
        let accepted = Accepted {
            node: ctx.name.clone(),
            pid,
        };
        // Before any output: the client learns the job started first.
        let _ = out
            .send(Ok(response(run_response::Msg::Accepted(accepted))))
            .await;
        let (control_tx, control) = mpsc::unbounded_channel();
        let limits = &ctx.limits;
        let output = Output::start(
            started.stdout,
            started.stderr,
            out,
            limits.output_bytes,
            control_tx.clone(),
        );
        let input = Input::start(
            inbound,
            started.stdin,
            control_tx,
            limits.stdin_bytes_per_sec,
        );
        let memory = limits
            .memory_bytes
            .map(|limit| ctx.memory.watch(pid, limit));
        Ok(Running {
            group,
            input,
            output,
            memory,
            slot,
            control,
            started_at,
        })
    }

    /// Watches the job until its leader exits, killing its group (once, the
    /// first reason counts) when the client leaves, a limit or the timeout
    /// is hit, or the node gives up draining; delivers the client's signals.
    async fn supervise(&mut self, ctx: &NodeContext, job: &ValidJob, out: &Outbound) -> Ended {
        let pid = self.group.pgid;
        let deadline = deadline(job.timeout(), ctx.limits.wall);
        let timer = tokio::time::sleep(deadline.map_or(Duration::MAX / 4, |(after, _)| after));
        tokio::pin!(timer);
        let reaper = process::reap(pid);
        tokio::pin!(reaper);
        let mut abort = ctx.abort_all.clone();
        let (control, memory) = (&mut self.control, &mut self.memory);
        let mut killed: Option<Kill> = None;
        let reaped = loop {
            tokio::select! {
                reaped = &mut reaper => break reaped,
                Some(ctl) = control.recv() => match ctl {
                    Control::Signal(signal) if process::is_deliverable(signal) => {
                        process::signal_group(pid, signal)
                    }
                    Control::Signal(_) => {}
                    Control::ClientGone => kill(pid, &mut killed, Kill::ClientGone),
                    Control::OutputLimit(limit) => {
                        kill(pid, &mut killed, Kill::Limit(Exceeded::Output(limit)))
                    }
                },
                _ = out.closed(), if killed.is_none() => kill(pid, &mut killed, Kill::ClientGone),
                _ = &mut timer, if killed.is_none() && deadline.is_some() => {
                    kill(pid, &mut killed, deadline.expect("guarded").1)
                }
                over = async { (&mut memory.as_mut().expect("guarded").over).await },
                    if killed.is_none() && memory.is_some() => match over {
                    Ok(limit) => kill(pid, &mut killed, Kill::Limit(Exceeded::Memory(limit))),
                    // The watcher is gone: nothing more will come from it.
                    Err(_) => *memory = None,
                },
                _ = abort.wait_for(|abort| *abort), if killed.is_none() => {
                    kill(pid, &mut killed, Kill::Shutdown)
                }
                // A desktop's owner wants the machine back: the job ends as
                // on a node that shut down, so its client reruns it elsewhere.
                _ = ctx.reclaimed(&job.spec), if killed.is_none() => {
                    kill(pid, &mut killed, Kill::Shutdown)
                }
            }
        };
        // The job may die of the closed pipe before the kill: still the limit.
        let killed = killed.or_else(|| {
            self.output
                .exceeded()
                .map(|limit| Kill::Limit(Exceeded::Output(limit)))
        });
        Ended { reaped, killed }
    }

    /// Ends everything the job held, in the order of the fields, and
    /// returns its exit message.
    async fn finish(self, ended: Ended, limits: &JobLimits) -> Exit {
        let Running {
            group,
            input,
            output,
            memory,
            slot,
            control: _,
            started_at,
        } = self;
        // A job that failed because a fork hit the process limit is told so.
        let killed = match (ended.killed, &ended.reaped, limits.processes) {
            (None, Ok(reaped), Some(max))
                if reaped.status != Ok(0) && group.hit_process_limit() =>
            {
                Some(Kill::Limit(Exceeded::Processes(max)))
            }
            (killed, _, _) => killed,
        };
        // Whatever the leader left running in its group or cgroup goes with
        // it: a node must not collect stray processes from finished jobs.
        drop(group);
        drop(input);
        // However slow the client, it gets what the job wrote.
        output.drain().await;
        drop(memory);
        drop(slot);
        end::exit_message(ended.reaped, started_at, killed, limits)
    }
}

/// When the job is killed for taking too long, and what that kill is
/// called: the client's timeout may only shorten the node's wall-clock
/// limit.
fn deadline(asked: Option<Duration>, wall: Option<Duration>) -> Option<(Duration, Kill)> {
    match (asked, wall) {
        (Some(asked), Some(wall)) if wall < asked => {
            Some((wall, Kill::Limit(Exceeded::Wall(wall))))
        }
        (Some(asked), _) => Some((asked, Kill::Timeout(asked))),
        (None, Some(wall)) => Some((wall, Kill::Limit(Exceeded::Wall(wall)))),
        (None, None) => None,
    }
}

fn kill(pid: u32, killed: &mut Option<Kill>, why: Kill) {
    process::kill_group(pid);
    killed.get_or_insert(why);
}

fn response(msg: run_response::Msg) -> RunResponse {
    RunResponse { msg: Some(msg) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_timeout_only_shortens_the_wall_clock_limit() {
        let s = Duration::from_secs;
        assert_eq!(
            deadline(Some(s(5)), Some(s(60))),
            Some((s(5), Kill::Timeout(s(5))))
        );
        assert_eq!(
            deadline(Some(s(90)), Some(s(60))),
            Some((s(60), Kill::Limit(Exceeded::Wall(s(60)))))
        );
        assert_eq!(
            deadline(None, Some(s(60))),
            Some((s(60), Kill::Limit(Exceeded::Wall(s(60)))))
        );
        assert_eq!(
            deadline(Some(s(5)), None),
            Some((s(5), Kill::Timeout(s(5))))
        );
        assert_eq!(deadline(None, None), None);
    }
}
