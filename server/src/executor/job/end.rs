//! How a job ended, as the client and the log see it: the `Exit` message
//! (status, resource use, the limit that killed it), the "job finished"
//! log line, and what a start that failed becomes.

use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use mexec_common::telemetry::Escaped;
use mexec_proto::v1::{exit, run_response, Exit};

use super::{response, Outbound};
use crate::executor::account::Account;
use crate::executor::account_note;
use crate::executor::environment;
use crate::executor::error::{self, JobError};
use crate::executor::limits::{self, Exceeded, JobLimits};
use crate::executor::observe::Outcome;
use crate::executor::process::{self, Reaped};
use crate::executor::valid_job::ValidJob;
use crate::executor::NodeContext;

/// The target of the per-job log lines, which log collectors filter on:
/// the job's module, whichever file writes them.
const LOG_TARGET: &str = "mexec_server::executor::job";

/// Why the executor killed the job, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    ClientGone,
    Timeout(Duration),
    Shutdown,
    Limit(Exceeded),
}

/// How the job's leader ended, and why the node killed the group if it did.
#[derive(Debug)]
pub struct Ended {
    pub reaped: std::io::Result<Reaped>,
    pub killed: Option<Kill>,
}

/// Logs the job and sends its exit; a job the node's shutdown killed ends
/// with a status instead (see `error::shut_down`).
pub async fn report(
    ctx: &NodeContext,
    job: &ValidJob,
    started_at: Instant,
    killed: Option<Kill>,
    mut exit: Exit,
    out: &Outbound,
) {
    if let Some(note) = account_note::note(job.run_as.as_ref(), &job.cwd, &exit) {
        exit.error = note;
    }
    log_job(ctx, job, started_at, &exit);
    let message = match killed {
        Some(Kill::Shutdown) => Err(error::shut_down(&ctx.name)),
        _ => Ok(response(run_response::Msg::Exit(exit))),
    };
    let _ = out.send(message).await;
}

/// How a job that ran ended, for the metrics and the gatekeeper.
pub fn outcome(killed: Option<Kill>, exit: &Exit) -> Outcome {
    match (killed, &exit.status) {
        (Some(Kill::Limit(_) | Kill::Timeout(_)), _) => Outcome::limit,
        _ if !exit.limit.is_empty() => Outcome::limit,
        (Some(Kill::ClientGone | Kill::Shutdown), _) => Outcome::lost,
        (None, Some(exit::Status::Code(0))) if exit.error.is_empty() => Outcome::exit_zero,
        // 255 with an error: the process was lost track of.
        (None, Some(exit::Status::Code(255))) if !exit.error.is_empty() => Outcome::lost,
        (None, Some(exit::Status::Code(_))) => Outcome::exit_nonzero,
        (None, Some(exit::Status::Signal(_))) => Outcome::signal,
        (None, None) => Outcome::lost,
    }
}

/// Answers a job whose process could not be started: the command's exit
/// as a shell gives it (127, 126), or a refusal the client can route
/// around when the working directory is at fault. Returns the exit sent,
/// `None` for a refusal.
pub async fn start_failed(
    ctx: &NodeContext,
    job: &ValidJob,
    started_at: Instant,
    err: &std::io::Error,
    out: &Outbound,
) -> Option<Exit> {
    match start_failure(job.run_as.as_ref(), job, err) {
        Ok(exit) => {
            log_job(ctx, job, started_at, &exit);
            let sent = exit.clone();
            let _ = out.send(Ok(response(run_response::Msg::Exit(exit)))).await;
            Some(sent)
        }
        // Not the command's fault: the client should go elsewhere.
        Err(refusal) => {
            ctx.unmounted.note(refusal.missing_cwd());
            tracing::info!(
                target: LOG_TARGET,
                job_id = %Escaped(&job.spec.job_id),
                node = %ctx.name,
                "job refused as it started"
            );
            let status = refusal.into_status(&ctx.name);
            let who = crate::refusal_log::Who::Claimed(&job.spec.user);
            crate::refusal_log::status(&ctx.name, job.peer, who, &status);
            let _ = out.send(Err(status)).await;
            None
        }
    }
}

fn start_failure(
    run_as: Option<&Account>,
    job: &ValidJob,
    err: &std::io::Error,
) -> Result<Exit, JobError> {
    if !job.cwd.is_dir() {
        return Err(JobError::CwdMissing {
            path: job.shown_cwd(),
            waited: std::time::Duration::ZERO,
        });
    }
    if let Some(account) = run_as {
        if !process::can_enter(&job.cwd, account) {
            return Err(JobError::CwdDenied {
                path: job.shown_cwd(),
                user: account.name.clone(),
            });
        }
    }
    // A PATH search that met an unreadable directory reports EACCES even
    // when the program is nowhere; a shell calls that "not found", so do we.
    let path = environment::job_path(&job.spec);
    let missing = err.kind() == std::io::ErrorKind::NotFound
        || !process::program_exists(
            &job.spec.argv[0],
            path.as_ref().map(|p| p.as_bytes()),
            &job.cwd,
        );
    let argv0 = &job.argv0;
    let (code, error) = if missing {
        (127, format!("command not found: {argv0}"))
    } else if err.kind() == std::io::ErrorKind::PermissionDenied {
        (126, format!("permission denied: {argv0}"))
    } else {
        (126, format!("cannot run {argv0}: {err}"))
    };
    Ok(Exit {
        status: Some(exit::Status::Code(code)),
        error,
        ..Exit::default()
    })
}

/// The exit message for a reaped job.
pub fn exit_message(
    reaped: std::io::Result<Reaped>,
    started_at: Instant,
    killed: Option<Kill>,
    limits: &JobLimits,
) -> Exit {
    let wall_us = started_at.elapsed().as_micros() as u64;
    let reaped = match reaped {
        Ok(reaped) => reaped,
        Err(err) => {
            return Exit {
                status: Some(exit::Status::Code(255)),
                wall_us,
                error: format!("lost track of the job's process: {err}"),
                ..Exit::default()
            }
        }
    };
    // The kernel enforces the CPU limit; the signal says it did.
    let killed = match (killed, reaped.status) {
        (None, Err(signal)) => {
            limits::hit_cpu_limit(limits, signal, reaped.user + reaped.system).map(Kill::Limit)
        }
        (killed, _) => killed,
    };
    let (error, limit) = match killed {
        Some(Kill::Timeout(limit)) => (format!("killed after its timeout of {limit:?}"), ""),
        Some(Kill::Shutdown) => (
            "killed: the node shut down before the job finished".to_owned(),
            "",
        ),
        Some(Kill::Limit(exceeded)) => (exceeded.message(), exceeded.name()),
        Some(Kill::ClientGone) | None => (String::new(), ""),
    };
    Exit {
        status: Some(match reaped.status {
            Ok(code) => exit::Status::Code(code),
            Err(signal) => exit::Status::Signal(signal),
        }),
        wall_us,
        user_us: reaped.user.as_micros() as u64,
        system_us: reaped.system.as_micros() as u64,
        max_rss_kib: reaped.max_rss_kib,
        error,
        limit: limit.to_owned(),
    }
}

fn log_job(ctx: &NodeContext, job: &ValidJob, started_at: Instant, exit: &Exit) {
    let status = match exit.status {
        Some(exit::Status::Code(code)) => format!("exit {code}"),
        Some(exit::Status::Signal(signal)) => format!("signal {signal}"),
        None => "unknown".to_owned(),
    };
    let spec = &job.spec;
    // What ran, when the policy resolved it: argv0 is only what was asked.
    let program = job.program.as_ref().map(|p| p.path.display().to_string());
    tracing::info!(
        target: LOG_TARGET,
        job_id = %Escaped(&spec.job_id),
        user = %Escaped(&spec.user),
        client_host = %Escaped(&spec.client_host),
        client_os = %Escaped(&spec.client_os),
        build_id = %Escaped(&spec.build_id),
        argv0 = %Escaped(&job.argv0),
        program = program.as_deref(),
        run_as = job.run_as.as_ref().map(|account| account.name.as_str()),
        node = %ctx.name,
        duration_ms = started_at.elapsed().as_millis() as u64,
        status,
        error = %Escaped(&exit.error),
        "job finished"
    );
}
