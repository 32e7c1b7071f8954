//! `mexecd` settings: flags and `MEXEC_*` variables override the TOML file,
//! which overrides the defaults. The options every daemon takes come from
//! `daemon` (flattened into the flags and the file); `Settings::resolve`
//! adds the executor's own and its safety rule (jobs never run as root),
//! so a daemon that would be an open door never starts.

use crate::web::{WebError, WebFile, WebFlags, WebListen};
use std::time::Duration;

use clap::Parser;
use mexec_common::config_file::{self, ConfigFileError};
use serde::Deserialize;

use super::account::{self, AccountError, JobAccounts};
use super::lease_check::DirectJobs;
use super::limits::JobLimits;
use super::owner_load::DesktopPolicy;
use crate::daemon::{
    non_empty, DaemonFile, DaemonFlags, DaemonSettings, DaemonSettingsError, NoOtherKeys, Role,
    DEFAULT_MAX_STREAMS_PER_PEER,
};

/// The port an executor listens on when none is given.
pub const DEFAULT_PORT: u16 = 7460;

/// What sets `mexecd` apart among the daemons.
const ROLE: Role = Role {
    config_env: "MEXECD_CONFIG",
    config_example: "deploy/mexecd.toml",
    listen_env: "MEXEC_LISTEN",
    default_port: DEFAULT_PORT,
    exposes: "run commands on this node",
};

/// Command-line flags of `mexecd`; each also reads a `MEXEC_*` variable.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mexecd",
    version,
    about = "mexec executor daemon: runs jobs sent by mexec clients",
    mut_arg("config", |arg| ROLE.config_flag(arg)),
    mut_arg("listen", |arg| ROLE.listen_flag(arg)),
)]
pub struct Flags {
    #[command(flatten)]
    pub daemon: DaemonFlags,
    /// Jobs that may run at once [default: the number of CPUs].
    #[arg(long, env = "MEXEC_SLOTS")]
    pub slots: Option<u32>,
    /// Jobs that may wait for a slot before new ones are refused [default: slots].
    #[arg(long, env = "MEXEC_MAX_QUEUED")]
    pub max_queued: Option<u32>,
    /// This node's name in load reports and messages [default: the host name].
    #[arg(long, env = "MEXEC_NAME")]
    pub name: Option<String>,
    /// Account jobs run as; when mexecd starts as root, this or
    /// --run-as-submitter is required.
    #[arg(long, env = "MEXEC_USER", conflicts_with = "run_as_submitter")]
    pub user: Option<String>,
    /// Run each job as the account of its submitter, as proven by the
    /// client certificate (mutual TLS) or MUNGE; needs root.
    #[arg(long, env = "MEXEC_RUN_AS_SUBMITTER")]
    pub run_as_submitter: bool,
    /// With --run-as-submitter: the lowest uid a job may run as
    /// [default: 1000].
    #[arg(long, env = "MEXEC_MIN_UID")]
    pub min_uid: Option<u32>,
    /// Seconds running jobs may take to finish after SIGTERM [default: 60].
    #[arg(long, env = "MEXEC_GRACE_SECS")]
    pub grace_secs: Option<u64>,
    /// Milliseconds a missing working directory is waited for (and
    /// revalidated) before the job is refused, for a network file system
    /// that shows new directories late; 0 refuses at once [default: 2000].
    #[arg(long, env = "MEXEC_CWD_WAIT_MS")]
    pub cwd_wait_ms: Option<u64>,
    /// Before reporting a job's exit, fsync the files it changed in its
    /// working directory, for a network file system that writes back
    /// after close (costly: see docs/network-file-systems.md).
    #[arg(long, env = "MEXEC_WRITE_BACK_OUTPUTS")]
    pub write_back_outputs: bool,
    /// Gatekeeper to register with and report load to (host:port).
    #[arg(long, env = "MEXEC_GATEKEEPER")]
    pub gatekeeper: Option<String>,
    /// host:port clients should use to reach this executor [default: the
    /// listen address, or the address the gatekeeper sees us from].
    #[arg(long, env = "MEXEC_ADVERTISE")]
    pub advertise: Option<String>,
    /// With --gatekeeper: `lease` takes jobs only with the gatekeeper's
    /// lease, so its per-user limits and fair share hold; `allow` also takes
    /// jobs placed directly [default: lease].
    #[arg(long, env = "MEXEC_DIRECT_JOBS", value_enum)]
    pub direct_jobs: Option<DirectJobs>,
    /// Programs this node runs, by name or path, comma-separated [default: all].
    #[arg(long, env = "MEXEC_ALLOWED_PROGRAMS", value_delimiter = ',')]
    pub allowed_programs: Vec<String>,
    #[command(flatten)]
    pub limits: LimitFlags,
    #[command(flatten)]
    pub desktop: DesktopFlags,
    /// Streams one peer address may hold open at once [default: 1024].
    #[arg(long, env = "MEXEC_MAX_STREAMS_PER_PEER")]
    pub max_streams_per_peer: Option<usize>,
    #[command(flatten)]
    pub web: WebFlags,
    /// A label jobs may require (`mexec --require label:KEY`): KEY=VALUE
    /// or KEY (repeatable; MEXEC_LABELS: comma-separated).
    #[arg(
        long = "label",
        env = "MEXEC_LABELS",
        value_delimiter = ',',
        value_name = "KEY[=VALUE]"
    )]
    pub labels: Vec<String>,
}

/// The flags that bound what one job may use.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitFlags {
    /// Wall-clock seconds a job may run; 0 is no limit [default: 86400].
    #[arg(long, env = "MEXEC_MAX_WALL_SECS")]
    pub max_wall_secs: Option<u64>,
    /// CPU seconds each process of a job may use; 0 is no limit [default: 0].
    #[arg(long, env = "MEXEC_MAX_CPU_SECS")]
    pub max_cpu_secs: Option<u64>,
    /// Resident memory of a job, MiB; 0 is no limit [default: 3/4 of RAM].
    #[arg(long, env = "MEXEC_MAX_MEMORY_MIB")]
    pub max_memory_mib: Option<u64>,
    /// Address space of each process of a job, MiB; 0 is no limit [default: 0].
    #[arg(long, env = "MEXEC_MAX_ADDRESS_SPACE_MIB")]
    pub max_address_space_mib: Option<u64>,
    /// stdout and stderr bytes of a job, MiB; 0 is no limit [default: 1024].
    #[arg(long, env = "MEXEC_MAX_OUTPUT_MIB")]
    pub max_output_mib: Option<u64>,
    /// Open files of each process of a job; 0 is no limit [default: 4096].
    #[arg(long, env = "MEXEC_MAX_OPEN_FILES")]
    pub max_open_files: Option<u64>,
    /// Processes a job may have at once; 0 is no limit [default: 256].
    #[arg(long, env = "MEXEC_MAX_PROCESSES")]
    pub max_processes: Option<u64>,
}

/// The flags of a desktop node, whose owner comes first.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DesktopFlags {
    /// A desktop node: jobs run at idle CPU and I/O priority, and the slots
    /// offered shrink as the owner's own load grows, down to none.
    #[arg(long, env = "MEXEC_DESKTOP")]
    pub desktop: bool,
    /// With --desktop: when the owner needs the whole machine (or memory is
    /// short) for the hold time, repeatable jobs are stopped and rerun by
    /// their clients elsewhere.
    #[arg(long, env = "MEXEC_RECLAIM")]
    pub reclaim: bool,
    /// The hold time of --reclaim, in milliseconds [default: 1000].
    #[arg(long, env = "MEXEC_RECLAIM_AFTER_MS")]
    pub reclaim_after_ms: Option<u64>,
    /// With --desktop: below this much available memory, MiB, the node
    /// admits nothing [default: 1/10 of RAM].
    #[arg(long, env = "MEXEC_DESKTOP_MIN_AVAILABLE_MIB")]
    pub desktop_min_available_mib: Option<u64>,
}

/// The TOML config file of `mexecd`. Every field is optional; the shared
/// keys (listen, token_file, insecure, tls_ca, tls_cert, tls_key,
/// allowed_users, log_format, start_timeout_secs) are in `daemon`.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(flatten)]
    pub daemon: DaemonFile,
    /// Jobs that may run at once. Default: the number of CPUs.
    pub slots: Option<u32>,
    /// Jobs that may wait for a slot. Default: equal to `slots`.
    pub max_queued: Option<u32>,
    /// This node's name. Default: the host name.
    pub name: Option<String>,
    /// Account jobs run as. Default: the daemon's own (refused for root).
    pub user: Option<String>,
    /// Run each job as its proven submitter's account. Default: false.
    pub run_as_submitter: Option<bool>,
    /// With `run_as_submitter`: the lowest uid a job may run as. Default: 1000.
    pub min_uid: Option<u32>,
    /// Seconds running jobs may take to finish after SIGTERM. Default: 60.
    pub grace_secs: Option<u64>,
    /// Milliseconds a missing working directory is waited for before the
    /// job is refused; 0 refuses at once. Default: 2000.
    pub cwd_wait_ms: Option<u64>,
    /// Fsync the files a job changed in its working directory before its
    /// exit is reported. Default: false.
    pub write_back_outputs: Option<bool>,
    /// Gatekeeper to join, "host:port". Default: none.
    pub gatekeeper: Option<String>,
    /// "host:port" clients use to reach this node. Default: the listen
    /// address, or the address the gatekeeper sees us from.
    pub advertise: Option<String>,
    /// With a gatekeeper: "lease" (jobs only with its lease) or "allow"
    /// (direct jobs too). Default: "lease".
    pub direct_jobs: Option<DirectJobs>,
    /// Programs this node runs, by name ("gcc") or path ("/usr/bin/gcc").
    /// Default: all.
    pub allowed_programs: Option<Vec<String>>,
    /// Wall-clock seconds a job may run; 0 is no limit. Default: 86400.
    pub max_wall_secs: Option<u64>,
    /// CPU seconds each process of a job may use; 0 is no limit. Default: 0.
    pub max_cpu_secs: Option<u64>,
    /// Resident memory of a job in MiB; 0 is no limit. Default: 3/4 of RAM.
    pub max_memory_mib: Option<u64>,
    /// Address space of each process in MiB; 0 is no limit. Default: 0.
    pub max_address_space_mib: Option<u64>,
    /// stdout plus stderr of a job in MiB; 0 is no limit. Default: 1024.
    pub max_output_mib: Option<u64>,
    /// Open files of each process; 0 is no limit. Default: 4096.
    pub max_open_files: Option<u64>,
    /// Processes a job may have at once; 0 is no limit. Default: 256.
    pub max_processes: Option<u64>,
    /// stdin bytes per second read from a client; 0 is no limit. Default: 64 MiB.
    pub max_stdin_bytes_per_sec: Option<u64>,
    /// Streams one peer address may hold open at once. Default: 1024.
    pub max_streams_per_peer: Option<usize>,
    /// A desktop node: jobs at idle priority, slots offered shrink with the
    /// owner's load. Default: false.
    pub desktop: Option<bool>,
    /// With `desktop`: give repeatable jobs back when the owner needs the
    /// whole machine for `reclaim_after_ms`. Default: false.
    pub reclaim: Option<bool>,
    /// The hold time of `reclaim`, in milliseconds. Default: 1000.
    pub reclaim_after_ms: Option<u64>,
    /// With `desktop`: below this much available memory (MiB) admit
    /// nothing. Default: 1/10 of RAM.
    pub desktop_min_available_mib: Option<u64>,
    /// Labels jobs may require, "KEY=VALUE" or "KEY", used when no
    /// `--label` is given. Default: none.
    pub labels: Option<Vec<String>>,
    /// Any other key is refused.
    #[serde(flatten)]
    pub web: WebFile,
    #[serde(flatten)]
    _other: NoOtherKeys,
}

/// Everything an executor needs, checked and resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What every daemon has: listen address, authentication, log format.
    pub daemon: DaemonSettings,
    /// Jobs that may run at once.
    pub slots: u32,
    /// Jobs that may wait for a slot.
    pub max_queued: u32,
    /// Node name.
    pub name: String,
    /// Whose account jobs run as.
    pub run_as: JobAccounts,
    /// How long running jobs may take to finish after SIGTERM.
    pub grace: Duration,
    /// How long a missing working directory is waited for.
    pub cwd_wait: Duration,
    /// Whether a job's changed files are fsynced before its exit goes out.
    pub write_back_outputs: bool,
    /// The gatekeeper to join, if any.
    pub gatekeeper: Option<String>,
    /// The address advertised to clients through the gatekeeper.
    pub advertise: Option<String>,
    /// Whether, as a member, jobs without the gatekeeper's lease are taken.
    pub direct_jobs: DirectJobs,
    /// Programs that may run here; empty admits all.
    pub allowed_programs: Vec<String>,
    /// What one job may use.
    pub limits: JobLimits,
    /// Streams one peer address may hold open.
    pub max_streams_per_peer: usize,
    /// A desktop node's policy; `None` for a node of the farm.
    pub desktop: Option<DesktopPolicy>,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics: Option<WebListen>,
    /// Labels, "KEY=VALUE" or "KEY", reported with the node's properties.
    pub labels: Vec<String>,
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error(transparent)]
    Daemon(#[from] DaemonSettingsError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Web(#[from] WebError),
    #[error("--slots must be at least 1")]
    NoSlots,
    #[error("--label / labels: {0}")]
    BadLabel(String),
    #[error("--reclaim gives a desktop's jobs back to its owner: it needs --desktop")]
    ReclaimWithoutDesktop,
    #[error(
        "mexecd runs as root, and jobs never run as root: give --run-as-submitter (each job \
         runs as the user who sent it; needs mutual TLS or MUNGE) or --user NAME (one \
         unprivileged account that can write the shared tree) for jobs to run as"
    )]
    RootWithoutUser,
    #[error("--user and --run-as-submitter exclude each other: give one (user = and run_as_submitter = in the config file)")]
    UserAndSubmitter,
    #[error(
        "--run-as-submitter needs mexecd to start as root (systemd: User=root with \
         CAP_SETUID, CAP_SETGID and CAP_KILL, as deploy/mexecd.service grants)"
    )]
    SubmitterNeedsRoot,
    #[error(
        "--run-as-submitter needs proof of who the user is, and a token proves only that the \
         caller knows the cluster's secret: configure mutual TLS (--tls-ca, --tls-cert, \
         --tls-key, with a user certificate per user from `mexec-cert user`) or --munge"
    )]
    SubmitterWithoutProof,
    #[error(
        "--user {0} needs mexecd to start as root (to switch to that account); \
         start it as {0} instead, without --user"
    )]
    UserNeedsRoot(String),
}

impl Settings {
    /// Merges flags, the config file and defaults, then checks safety rules.
    pub fn resolve(flags: Flags) -> Result<Settings, SettingsError> {
        let file: FileConfig = config_file::load_or_default(flags.daemon.config.as_deref(), None)?;
        let limits = job_limits(&flags.limits, &file);
        let slots = flags
            .slots
            .or(file.slots)
            .unwrap_or_else(mexec_common::host::cpu_count);
        if slots == 0 {
            return Err(SettingsError::NoSlots);
        }
        let desktop = desktop_policy(&flags.desktop, &file, slots)?;
        let labels = non_empty(flags.labels).or(file.labels).unwrap_or_default();
        for label in &labels {
            mexec_common::properties::check_label(label).map_err(SettingsError::BadLabel)?;
        }
        let daemon = DaemonSettings::resolve(flags.daemon, file.daemon, ROLE)?;
        let submitter = flags.run_as_submitter || file.run_as_submitter.unwrap_or(false);
        let min_uid = flags
            .min_uid
            .or(file.min_uid)
            .unwrap_or(account::DEFAULT_MIN_UID);
        let run_as = job_accounts(
            flags.user.or(file.user),
            submitter.then_some(min_uid),
            &daemon,
        )?;
        let metrics = WebListen::resolve(
            flags.web.metrics_listen.or(file.web.metrics_listen),
            &daemon,
            flags.web.insecure(&file.web),
        )?;
        Ok(Settings {
            metrics,
            daemon,
            slots,
            max_queued: flags.max_queued.or(file.max_queued).unwrap_or(slots),
            name: flags
                .name
                .or(file.name)
                .unwrap_or_else(mexec_common::host::name),
            run_as,
            grace: Duration::from_secs(flags.grace_secs.or(file.grace_secs).unwrap_or(60)),
            cwd_wait: flags
                .cwd_wait_ms
                .or(file.cwd_wait_ms)
                .map(Duration::from_millis)
                .unwrap_or(super::cwd_wait::DEFAULT_CWD_WAIT),
            write_back_outputs: flags.write_back_outputs
                || file.write_back_outputs.unwrap_or(false),
            gatekeeper: flags.gatekeeper.or(file.gatekeeper),
            advertise: flags.advertise.or(file.advertise),
            direct_jobs: flags.direct_jobs.or(file.direct_jobs).unwrap_or_default(),
            allowed_programs: non_empty(flags.allowed_programs)
                .or(file.allowed_programs)
                .unwrap_or_default(),
            limits,
            max_streams_per_peer: flags
                .max_streams_per_peer
                .or(file.max_streams_per_peer)
                .unwrap_or(DEFAULT_MAX_STREAMS_PER_PEER)
                .max(1),
            desktop,
            labels,
        })
    }
}

/// A desktop node's policy from its flags over the file, if it is one.
fn desktop_policy(
    flags: &DesktopFlags,
    file: &FileConfig,
    slots: u32,
) -> Result<Option<DesktopPolicy>, SettingsError> {
    let desktop = flags.desktop || file.desktop.unwrap_or(false);
    let reclaim = flags.reclaim || file.reclaim.unwrap_or(false);
    match (desktop, reclaim) {
        (false, true) => return Err(SettingsError::ReclaimWithoutDesktop),
        (false, false) => return Ok(None),
        _ => {}
    }
    let hold = flags
        .reclaim_after_ms
        .or(file.reclaim_after_ms)
        .unwrap_or(1000);
    let min_available_bytes = flags
        .desktop_min_available_mib
        .or(file.desktop_min_available_mib)
        .map(|mib| mib << 20)
        .unwrap_or_else(|| super::procfs::meminfo_bytes("MemTotal").unwrap_or(0) / 10);
    Ok(Some(DesktopPolicy {
        slots,
        cores: mexec_common::host::cpu_count(),
        min_available_bytes,
        reclaim_after: reclaim.then(|| Duration::from_millis(hold)),
    }))
}

/// Whose account jobs run as: jobs never run as root, only root can switch
/// to another account, and running each as its submitter needs a proof of
/// who that is (`submitter_min_uid` is `Some` for `--run-as-submitter`).
fn job_accounts(
    user: Option<String>,
    submitter_min_uid: Option<u32>,
    daemon: &DaemonSettings,
) -> Result<JobAccounts, SettingsError> {
    let root = account::running_as_root();
    match (user, submitter_min_uid) {
        (Some(_), Some(_)) => Err(SettingsError::UserAndSubmitter),
        (None, Some(_)) if !root => Err(SettingsError::SubmitterNeedsRoot),
        (None, Some(_)) if !daemon.proves_users() => Err(SettingsError::SubmitterWithoutProof),
        (None, Some(min_uid)) => Ok(JobAccounts::Submitter { min_uid }),
        (None, None) if root => Err(SettingsError::RootWithoutUser),
        (None, None) => Ok(JobAccounts::Own),
        (Some(user), None) if root => Ok(JobAccounts::One(account::lookup(&user)?)),
        (Some(user), None) if user == account::current_user_name() => Ok(JobAccounts::Own),
        (Some(user), None) => Err(SettingsError::UserNeedsRoot(user)),
    }
}

/// The job limits: a flag over the file over the default; 0 turns one off.
fn job_limits(flags: &LimitFlags, file: &FileConfig) -> JobLimits {
    let defaults = JobLimits::default();
    let pick = |flag: Option<u64>, key: Option<u64>, default: Option<u64>| match flag.or(key) {
        Some(0) => None,
        Some(value) => Some(value),
        None => default,
    };
    let mib = |v: u64| v << 20;
    let secs = |d: Duration| d.as_secs();
    JobLimits {
        wall: pick(
            flags.max_wall_secs,
            file.max_wall_secs,
            defaults.wall.map(secs),
        )
        .map(Duration::from_secs),
        cpu: pick(
            flags.max_cpu_secs,
            file.max_cpu_secs,
            defaults.cpu.map(secs),
        )
        .map(Duration::from_secs),
        memory_bytes: pick(
            flags.max_memory_mib.map(mib),
            file.max_memory_mib.map(mib),
            defaults.memory_bytes,
        ),
        address_space_bytes: pick(
            flags.max_address_space_mib.map(mib),
            file.max_address_space_mib.map(mib),
            defaults.address_space_bytes,
        ),
        output_bytes: pick(
            flags.max_output_mib.map(mib),
            file.max_output_mib.map(mib),
            defaults.output_bytes,
        ),
        open_files: pick(
            flags.max_open_files,
            file.max_open_files,
            defaults.open_files,
        ),
        processes: pick(flags.max_processes, file.max_processes, defaults.processes),
        stdin_bytes_per_sec: pick(
            None,
            file.max_stdin_bytes_per_sec,
            defaults.stdin_bytes_per_sec,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            // Tests run as root in CI; give an account so the root rule passes.
            user: account::running_as_root().then(|| "nobody".to_owned()),
            ..Flags::default()
        }
    }

    /// Flags that read a config file holding `text`; the file lives as
    /// long as the returned directory.
    fn flags_with_file(text: &str) -> (Flags, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mexecd.toml");
        std::fs::write(&path, text).unwrap();
        let mut f = flags();
        f.daemon.config = Some(path);
        (f, dir)
    }

    #[test]
    fn defaults_are_loopback_and_one_slot_per_cpu() {
        let s = Settings::resolve(flags()).unwrap();
        assert!(s.daemon.listen.ip().is_loopback());
        assert_eq!(s.daemon.listen.port(), DEFAULT_PORT);
        assert_eq!(s.slots, mexec_common::host::cpu_count());
        assert_eq!(s.max_queued, s.slots);
        assert!(!s.daemon.is_insecure());
    }

    #[test]
    fn open_listen_needs_a_token_or_insecure() {
        let mut f = flags();
        f.daemon.listen = Some("0.0.0.0:7460".parse().unwrap());
        let err = Settings::resolve(f).unwrap_err().to_string();
        assert!(err.contains("refusing to listen on 0.0.0.0:7460"), "{err}");
        assert!(err.contains("could run commands on this node"), "{err}");
        let mut f = flags();
        f.daemon.listen = Some("0.0.0.0:7460".parse().unwrap());
        f.daemon.insecure = true;
        assert!(Settings::resolve(f).unwrap().daemon.is_insecure());
    }

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_refused() {
        let (mut f, _dir) =
            flags_with_file("slots = 3\nname = \"from-file\"\nlisten = \"127.0.0.1:1\"\n");
        f.name = Some("from-flag".into());
        let s = Settings::resolve(f).unwrap();
        assert_eq!((s.slots, s.name.as_str()), (3, "from-flag"));
        assert_eq!(s.daemon.listen.port(), 1, "a shared key from the file");

        let (f, _dir) = flags_with_file("slotz = 3\n");
        let err = Settings::resolve(f).unwrap_err().to_string();
        assert!(err.contains("slotz"), "{err}");
    }

    #[test]
    fn tls_opens_the_door_and_needs_all_three_files() {
        use crate::certs::{self, Kind, Validity};
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::new_ca("ca", Validity::days(1)).unwrap();
        let (ca_pem, _) = ca.write(dir.path(), "ca").unwrap();
        let node = certs::issue(&ca, Kind::Node, "n1", &[], Validity::days(1)).unwrap();
        let (cert, key) = node.write(dir.path(), "n1").unwrap();
        let mut f = flags();
        f.daemon.listen = Some("0.0.0.0:7460".parse().unwrap());
        f.daemon.tls_ca = Some(ca_pem.clone());
        f.daemon.tls_cert = Some(cert);
        f.daemon.tls_key = Some(key);
        let s = Settings::resolve(f).unwrap();
        assert!(!s.daemon.is_insecure());
        assert_eq!(s.daemon.auth_mode(), "mutual TLS");

        let mut f = flags();
        f.daemon.tls_ca = Some(ca_pem);
        let err = Settings::resolve(f).unwrap_err().to_string();
        assert!(err.contains("missing: --tls-cert, --tls-key"), "{err}");
    }

    #[test]
    fn limits_take_flags_over_the_file_and_zero_turns_one_off() {
        let (mut f, _dir) =
            flags_with_file("max_wall_secs = 60\nmax_output_mib = 0\nmax_cpu_secs = 5\n");
        f.limits.max_cpu_secs = Some(7);
        let limits = Settings::resolve(f).unwrap().limits;
        assert_eq!(limits.wall, Some(Duration::from_secs(60)));
        assert_eq!(limits.cpu, Some(Duration::from_secs(7)));
        assert_eq!(limits.output_bytes, None);
        assert_eq!(limits.open_files, Some(4096), "the default");
        assert_eq!(limits.processes, Some(256), "the default");
    }

    #[test]
    fn a_desktop_takes_its_policy_from_flags_over_the_file_and_reclaim_needs_it() {
        assert!(Settings::resolve(flags()).unwrap().desktop.is_none());
        let (mut f, _dir) =
            flags_with_file("desktop = true\nreclaim = true\nreclaim_after_ms = 300\nslots = 2\n");
        f.desktop.desktop_min_available_mib = Some(64);
        let d = Settings::resolve(f).unwrap().desktop.expect("a desktop");
        assert_eq!(d.reclaim_after, Some(Duration::from_millis(300)));
        assert_eq!((d.slots, d.min_available_bytes), (2, 64 << 20));

        let mut f = flags();
        f.desktop.reclaim = true;
        let err = Settings::resolve(f).unwrap_err().to_string();
        assert!(err.contains("needs --desktop"), "{err}");
    }

    #[test]
    fn root_needs_an_account_for_jobs_and_others_run_jobs_as_themselves() {
        let result = Settings::resolve(Flags::default());
        if account::running_as_root() {
            assert!(matches!(result, Err(SettingsError::RootWithoutUser)));
        } else {
            assert_eq!(result.unwrap().run_as, JobAccounts::Own);
        }
    }

    #[test]
    fn run_as_submitter_excludes_user_and_needs_root_and_a_proof() {
        let mut f = Flags {
            run_as_submitter: true,
            ..Flags::default()
        };
        f.user = Some("nobody".into());
        let err = Settings::resolve(f).unwrap_err();
        assert!(matches!(err, SettingsError::UserAndSubmitter), "{err}");
        let (mut f, _dir) = flags_with_file("run_as_submitter = true\nmin_uid = 2000\n");
        f.user = None;
        let err = Settings::resolve(f).unwrap_err();
        if account::running_as_root() {
            // Token mode (or none) proves no user.
            assert!(matches!(err, SettingsError::SubmitterWithoutProof), "{err}");
            assert!(
                err.to_string().contains("configure mutual TLS (--tls-ca"),
                "{err}"
            );
            assert!(err.to_string().contains("or --munge"), "{err}");
        } else {
            assert!(matches!(err, SettingsError::SubmitterNeedsRoot), "{err}");
        }
    }

    /// The flags, variables and keys are an interface: scripts and unit
    /// files name them. This holds them to the README's table.
    #[test]
    fn every_flag_variable_and_key_keeps_its_name() {
        use clap::CommandFactory;
        crate::daemon::assert_flags(
            Flags::command(),
            &[
                "config MEXECD_CONFIG",
                "listen MEXEC_LISTEN",
                "slots MEXEC_SLOTS",
                "max-queued MEXEC_MAX_QUEUED",
                "name MEXEC_NAME",
                "token-file MEXEC_TOKEN_FILE",
                "insecure",
                "user MEXEC_USER",
                "run-as-submitter MEXEC_RUN_AS_SUBMITTER",
                "min-uid MEXEC_MIN_UID",
                "munge MEXEC_MUNGE",
                "munge-socket MEXEC_MUNGE_SOCKET",
                "relay-from MEXEC_RELAY_FROM",
                "grace-secs MEXEC_GRACE_SECS",
                "log-format MEXEC_LOG_FORMAT",
                "cwd-wait-ms MEXEC_CWD_WAIT_MS",
                "write-back-outputs MEXEC_WRITE_BACK_OUTPUTS",
                "gatekeeper MEXEC_GATEKEEPER",
                "advertise MEXEC_ADVERTISE",
                "direct-jobs MEXEC_DIRECT_JOBS",
                "tls-ca MEXEC_TLS_CA",
                "tls-cert MEXEC_TLS_CERT",
                "tls-key MEXEC_TLS_KEY",
                "allowed-users MEXEC_ALLOWED_USERS",
                "allowed-programs MEXEC_ALLOWED_PROGRAMS",
                "max-wall-secs MEXEC_MAX_WALL_SECS",
                "max-cpu-secs MEXEC_MAX_CPU_SECS",
                "max-memory-mib MEXEC_MAX_MEMORY_MIB",
                "max-address-space-mib MEXEC_MAX_ADDRESS_SPACE_MIB",
                "max-output-mib MEXEC_MAX_OUTPUT_MIB",
                "max-open-files MEXEC_MAX_OPEN_FILES",
                "max-processes MEXEC_MAX_PROCESSES",
                "start-timeout-secs MEXEC_START_TIMEOUT_SECS",
                "max-streams-per-peer MEXEC_MAX_STREAMS_PER_PEER",
                "metrics-listen MEXEC_METRICS_LISTEN",
                "http-insecure",
                "desktop MEXEC_DESKTOP",
                "reclaim MEXEC_RECLAIM",
                "reclaim-after-ms MEXEC_RECLAIM_AFTER_MS",
                "desktop-min-available-mib MEXEC_DESKTOP_MIN_AVAILABLE_MIB",
                "label MEXEC_LABELS",
            ],
        );

        let every_key = "listen = \"127.0.0.1:1\"\nslots = 1\nmax_queued = 1\nname = \"n\"\n\
            token_file = \"/t\"\ninsecure = false\nuser = \"u\"\ngrace_secs = 1\n\
            log_format = \"json\"\ngatekeeper = \"g:1\"\nadvertise = \"a:1\"\n\
            direct_jobs = \"allow\"\n\
            tls_ca = \"/a\"\ntls_cert = \"/b\"\ntls_key = \"/c\"\nallowed_users = []\n\
            allowed_programs = []\nmax_wall_secs = 1\nmax_cpu_secs = 1\nmax_memory_mib = 1\n\
            max_address_space_mib = 1\nmax_output_mib = 1\nmax_open_files = 1\n\
            max_processes = 1\nmax_stdin_bytes_per_sec = 1\nstart_timeout_secs = 1\nmax_streams_per_peer = 1\n\
            metrics_listen = \"127.0.0.1:2\"\nhttp_insecure = false\n\
            desktop = true\nreclaim = true\nreclaim_after_ms = 1\n\
            desktop_min_available_mib = 1\nrun_as_submitter = false\nmin_uid = 1000\n\
            munge = false\nmunge_socket = \"/m\"\nrelay_from = [\"gk\"]\n\
            cwd_wait_ms = 1\nwrite_back_outputs = true\nlabels = [\"gpu\"]\n";
        let file: FileConfig =
            config_file::parse(std::path::Path::new("mexecd.toml"), every_key).unwrap();
        assert_eq!(file.daemon.token_file, Some("/t".into()));
        assert_eq!(file.max_streams_per_peer, Some(1));
        assert_eq!(file.direct_jobs, Some(DirectJobs::Allow));
        assert_eq!(file.cwd_wait_ms, Some(1));
    }
}
