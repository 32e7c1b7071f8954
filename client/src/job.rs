//! The job, made once and whole from how we were started and the
//! settings: argv for the form, cwd, environment and umask, who and what
//! build it belongs to, its timeout, whether it gets our stdin and whether
//! it may run twice; and the executors' view of it (`executor_view`),
//! which the protocol message carries.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mexec_proto::v1::{EnvVar, JobSpec, ToolchainFingerprint};

use crate::executor_view::{ExecutorView, ViewError};
use crate::invocation::{self, Form, Invocation};
use crate::masquerade;
use crate::origin::Origin;
use crate::settings::Settings;
use crate::toolchain_cache;
use crate::EXIT_MEXEC_FAILURE;

/// A command to run, with everything that makes it behave as locally.
/// `argv`, `cwd` and `env` are this machine's (for a local run);
/// `for_executors` is what the executors get.
#[derive(Debug, Clone)]
pub struct Job {
    pub argv: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    pub umask: u32,
    pub job_id: String,
    pub user: String,
    pub client_host: String,
    pub build_id: String,
    pub timeout: Option<Duration>,
    /// Whether our stdin is forwarded to the job.
    pub forward_stdin: bool,
    /// Whether the job may run again elsewhere after its node is lost. A
    /// job that got any of our stdin is not repeated all the same (stdin
    /// cannot be replayed); the retry loop checks that when a node is lost.
    pub repeatable: bool,
    /// argv, cwd and environment as sent to the executors.
    pub for_executors: ExecutorView,
    /// Our fingerprint of the job's compiler, when it is one and the
    /// toolchain is checked: only nodes with the same one run the job.
    pub toolchain: Option<ToolchainFingerprint>,
    /// What the job requires of its node.
    pub require: Vec<String>,
}

/// Why no job could be made.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Masquerade(#[from] masquerade::NotFound),
    #[error("no command given; usage: mexec [OPTIONS] [--] COMMAND [ARGS...] (see mexec --help)")]
    NoCommand,
    #[error("cannot read the current directory: {0}")]
    Cwd(String),
    #[error(transparent)]
    View(#[from] ViewError),
}

impl JobError {
    /// The exit code for `mexec`: a masquerade without its real program is
    /// a command not found, as the shell would say.
    pub fn exit_code(&self) -> i32 {
        match self {
            JobError::Masquerade(_) => 127,
            _ => EXIT_MEXEC_FAILURE,
        }
    }
}

impl Job {
    /// The job `invocation` asks for, in `origin`'s cwd, environment and
    /// umask, as `settings`' executors must see it.
    pub fn new(
        invocation: &Invocation,
        settings: &Settings,
        origin: &Origin,
    ) -> Result<Job, JobError> {
        let mut job = Job::without_toolchain(invocation, settings, origin)?;
        if job.checks_toolchain(settings) {
            job.add_toolchain();
        }
        Ok(job)
    }

    /// The job without our fingerprint of its compiler, which may mean
    /// running the compiler (the agent does that off its runtime).
    pub fn without_toolchain(
        invocation: &Invocation,
        settings: &Settings,
        origin: &Origin,
    ) -> Result<Job, JobError> {
        let mut env = origin.env.clone();
        let argv = command_line(invocation, settings, origin, &mut env)?;
        if argv.is_empty() {
            return Err(JobError::NoCommand);
        }
        let cwd = origin.cwd.clone().map_err(JobError::Cwd)?;
        let for_executors = ExecutorView::new(&argv, &cwd, &env, settings)?;
        let client_host = mexec_common::host::name();
        let build_id = origin
            .var_text("MEXEC_BUILD_ID")
            .unwrap_or_else(|| format!("{client_host}:{}", origin.build_scope));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Ok(Job {
            job_id: format!("{client_host}-{}-{nanos:x}", origin.pid),
            cwd,
            umask: origin.umask,
            // Claimed, not proven: trusted in token mode only; with mutual
            // TLS the certificate names the user.
            user: user_name(origin),
            client_host,
            build_id,
            timeout: settings.timeout,
            forward_stdin: settings.forward_stdin
                && !origin.stdin_terminal
                && !origin.stdin_null
                && invocation::may_read_stdin(&argv),
            repeatable: settings.retry || invocation::is_repeatable_compile(&argv),
            argv,
            env,
            for_executors,
            toolchain: None,
            require: settings.require.clone(),
        })
    }

    /// Whether the settings check the job's compiler: when it is one, and
    /// the executors run what we would (a client on another system has
    /// another compiler by nature, and is not checked). Only nodes with
    /// the same one then run the job.
    pub fn checks_toolchain(&self, settings: &Settings) -> bool {
        settings.check_toolchain
            && !settings.foreign_client()
            && mexec_common::toolchain::is_compiler(&self.program())
            // Inside a farm job the command runs where it is: there is no
            // node to match, and its account may have no cache to use.
            && mexec_common::farm_job::outer_job(&self.env).is_none()
    }

    /// Adds our fingerprint of the job's compiler: from the cache when it
    /// is current, else made (which runs the compiler); none when it is no
    /// compiler we can ask.
    pub fn add_toolchain(&mut self) {
        if let Some(program) = self.argv.first() {
            self.toolchain = toolchain_cache::fingerprint(program, &self.env, &self.cwd);
        }
    }

    /// argv[0], for messages.
    pub fn program(&self) -> String {
        self.argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The working directory as the executors get it.
    pub fn executor_cwd(&self) -> Vec<u8> {
        os_bytes(&self.for_executors.cwd).to_vec()
    }

    /// The protocol message.
    pub fn spec(&self) -> JobSpec {
        let view = &self.for_executors;
        JobSpec {
            argv: view.argv.iter().map(|a| os_bytes(a)).collect(),
            cwd: os_bytes(&view.cwd),
            env: view
                .env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: os_bytes(name),
                    value: os_bytes(value),
                })
                .collect(),
            umask: self.umask,
            job_id: self.job_id.clone(),
            user: self.user.clone(),
            client_host: self.client_host.clone(),
            build_id: self.build_id.clone(),
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64).unwrap_or(0),
            forward_stdin: self.forward_stdin,
            node_environment: view.node_environment,
            client_os: std::env::consts::OS.to_owned(),
            // Only a lease has one (`node_run`).
            lease: None,
            repeatable: self.repeatable && !self.forward_stdin,
            // Fresh for each attempt (`node_run`, `lease`): one decode each.
            munge_credential: String::new(),
            toolchain: self.toolchain.clone(),
            require: self.require.clone(),
        }
    }
}

/// argv for the form we were started in. Started as a masquerade, the job
/// runs the next real program of our name, and its PATH loses our
/// directory, or it would find our symlink and call mexec again.
fn command_line(
    invocation: &Invocation,
    settings: &Settings,
    origin: &Origin,
    env: &mut Vec<(OsString, OsString)>,
) -> Result<Vec<OsString>, JobError> {
    let args = invocation.args.iter().cloned();
    match &invocation.form {
        Form::Options | Form::Command => Ok(args.collect()),
        Form::Compiler => Ok(settings.cc.iter().cloned().chain(args).collect()),
        Form::Masquerade(name) => {
            let path = origin.var("PATH").unwrap_or_default();
            let resolved = masquerade::resolve(name, &path, &origin.exe)?;
            env.retain(|(k, _)| k != "PATH");
            env.push(("PATH".into(), resolved.path));
            Ok(std::iter::once(name.clone()).chain(args).collect())
        }
    }
}

/// Who submits the job: `MEXEC_SUBMIT_USER`, else `$USER` (or
/// `$LOGNAME`), else the password database (`os::user_name`). The name
/// only orders the fair queue and is a claim either way (certificates and
/// MUNGE prove it), so the environment is as good a source as the
/// database, and it spares every compile an NSS look-up.
fn user_name(origin: &Origin) -> String {
    ["MEXEC_SUBMIT_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| origin.var_text(name).filter(|n| !n.is_empty()))
        .unwrap_or_else(crate::os::user_name)
}

/// The raw bytes of an OS string (on Unix, exactly what the kernel has; on
/// Windows UTF-8, which is what a mapped path is).
fn os_bytes(s: &std::ffi::OsStr) -> Bytes {
    Bytes::copy_from_slice(s.as_encoded_bytes())
}
