//! `mexecd` settings: flags and `MEXEC_*` variables override the TOML file,
//! which overrides the defaults. `Settings::resolve` also applies the safety
//! rules, so a daemon that would be an open door never starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mexec_common::config_file::{self, ConfigFileError};
use mexec_common::telemetry::LogFormat;
use mexec_common::tls::{Tls, TlsError, TlsPaths};
use mexec_common::token::{Token, TokenError};
use serde::Deserialize;

use crate::executor::JobLimits;
use crate::users::{self, Account, AccountError};

/// The port an executor listens on when none is given.
pub const DEFAULT_PORT: u16 = 7460;

/// Command-line flags of `mexecd`; each also reads a `MEXEC_*` variable.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mexecd",
    version,
    about = "mexec executor daemon: runs jobs sent by mexec clients"
)]
pub struct Flags {
    /// TOML config file (see deploy/mexecd.toml).
    #[arg(long, env = "MEXECD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:7460].
    #[arg(long, env = "MEXEC_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Jobs that may run at once [default: the number of CPUs].
    #[arg(long, env = "MEXEC_SLOTS")]
    pub slots: Option<u32>,
    /// Jobs that may wait for a slot before new ones are refused [default: slots].
    #[arg(long, env = "MEXEC_MAX_QUEUED")]
    pub max_queued: Option<u32>,
    /// This node's name in load reports and messages [default: the host name].
    #[arg(long, env = "MEXEC_NAME")]
    pub name: Option<String>,
    /// File holding the cluster's shared token; requests must carry it.
    #[arg(long, env = "MEXEC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without authentication (anyone who reaches the
    /// port can run commands).
    #[arg(long)]
    pub insecure: bool,
    /// Account jobs run as; required when mexecd starts as root.
    #[arg(long, env = "MEXEC_USER")]
    pub user: Option<String>,
    /// Seconds running jobs may take to finish after SIGTERM [default: 60].
    #[arg(long, env = "MEXEC_GRACE_SECS")]
    pub grace_secs: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "MEXEC_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Gatekeeper to register with and report load to (host:port).
    #[arg(long, env = "MEXEC_GATEKEEPER")]
    pub gatekeeper: Option<String>,
    /// host:port clients should use to reach this executor [default: the
    /// listen address, or the address the gatekeeper sees us from].
    #[arg(long, env = "MEXEC_ADVERTISE")]
    pub advertise: Option<String>,
    /// The cluster CA certificate (PEM); with --tls-cert and --tls-key,
    /// turns on mutual TLS.
    #[arg(long, env = "MEXEC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), from `mexec-cert node`.
    #[arg(long, env = "MEXEC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "MEXEC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Users whose jobs this node runs, comma-separated [default: all].
    #[arg(long, env = "MEXEC_ALLOWED_USERS", value_delimiter = ',')]
    pub allowed_users: Vec<String>,
    /// Programs this node runs, by name or path, comma-separated [default: all].
    #[arg(long, env = "MEXEC_ALLOWED_PROGRAMS", value_delimiter = ',')]
    pub allowed_programs: Vec<String>,
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
    /// Seconds a client has to send the job after opening a stream [default: 10].
    #[arg(long, env = "MEXEC_START_TIMEOUT_SECS")]
    pub start_timeout_secs: Option<u64>,
    /// Streams one peer address may hold open at once [default: 1024].
    #[arg(long, env = "MEXEC_MAX_STREAMS_PER_PEER")]
    pub max_streams_per_peer: Option<usize>,
}

/// The TOML config file of `mexecd`. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address and port to listen on. Default: "127.0.0.1:7460".
    pub listen: Option<SocketAddr>,
    /// Jobs that may run at once. Default: the number of CPUs.
    pub slots: Option<u32>,
    /// Jobs that may wait for a slot. Default: equal to `slots`.
    pub max_queued: Option<u32>,
    /// This node's name. Default: the host name.
    pub name: Option<String>,
    /// File holding the shared token. Default: none (loopback only).
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without authentication. Default: false.
    pub insecure: Option<bool>,
    /// Account jobs run as. Default: the daemon's own (refused for root).
    pub user: Option<String>,
    /// Seconds running jobs may take to finish after SIGTERM. Default: 60.
    pub grace_secs: Option<u64>,
    /// "text" or "json". Default: "text".
    pub log_format: Option<LogFormat>,
    /// Gatekeeper to join, "host:port". Default: none.
    pub gatekeeper: Option<String>,
    /// "host:port" clients use to reach this node. Default: the listen
    /// address, or the address the gatekeeper sees us from.
    pub advertise: Option<String>,
    /// Cluster CA certificate for mutual TLS. Default: none (no TLS).
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// This node's private key. Default: none.
    pub tls_key: Option<PathBuf>,
    /// Users whose jobs this node runs. Default: all.
    pub allowed_users: Option<Vec<String>>,
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
    /// stdin bytes per second read from a client; 0 is no limit. Default: 64 MiB.
    pub max_stdin_bytes_per_sec: Option<u64>,
    /// Seconds a client has to send the job after opening a stream. Default: 10.
    pub start_timeout_secs: Option<u64>,
    /// Streams one peer address may hold open at once. Default: 1024.
    pub max_streams_per_peer: Option<usize>,
}

/// Everything an executor needs, checked and resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Jobs that may run at once.
    pub slots: u32,
    /// Jobs that may wait for a slot.
    pub max_queued: u32,
    /// Node name.
    pub name: String,
    /// The shared token, when authentication is on.
    pub token: Option<Token>,
    /// The account jobs run as; `None` runs them as the daemon's own user.
    pub run_as: Option<Account>,
    /// How long running jobs may take to finish after SIGTERM.
    pub grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// The gatekeeper to join, if any.
    pub gatekeeper: Option<String>,
    /// The address advertised to clients through the gatekeeper.
    pub advertise: Option<String>,
    /// Mutual TLS, when configured.
    pub tls: Option<Tls>,
    /// Users whose jobs run here; `None` admits all.
    pub allowed_users: Option<Vec<String>>,
    /// Programs that may run here; empty admits all.
    pub allowed_programs: Vec<String>,
    /// What one job may use.
    pub limits: JobLimits,
    /// How long a client has to send the job after opening a stream.
    pub start_timeout: Duration,
    /// Streams one peer address may hold open.
    pub max_streams_per_peer: usize,
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("--slots must be at least 1")]
    NoSlots,
    #[error(
        "refusing to listen on {0} without authentication: anyone who can reach it could run \
         commands on this node. Give --token-file FILE (the cluster's shared token), listen on \
         127.0.0.1, or pass --insecure to accept the risk"
    )]
    OpenDoor(SocketAddr),
    #[error(
        "mexecd runs as root, and jobs never run as root: give --user NAME (an unprivileged \
         account that can write the shared tree) for jobs to run as"
    )]
    RootWithoutUser,
    #[error(
        "--user {0} needs mexecd to start as root (to switch to that account); \
         start it as {0} instead, without --user"
    )]
    UserNeedsRoot(String),
}

impl Settings {
    /// Merges flags, the config file and defaults, then checks safety rules.
    pub fn resolve(flags: Flags) -> Result<Settings, SettingsError> {
        let file: FileConfig = config_file::load_or_default(flags.config.as_deref(), None)?;
        let limits = job_limits(&flags, &file);
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
        let slots = flags.slots.or(file.slots).unwrap_or_else(cpu_count);
        if slots == 0 {
            return Err(SettingsError::NoSlots);
        }
        let max_queued = flags.max_queued.or(file.max_queued).unwrap_or(slots);
        let name = flags
            .name
            .or(file.name)
            .unwrap_or_else(mexec_common::host::name);
        let token = flags
            .token_file
            .or(file.token_file)
            .map(|path| Token::from_file(&path))
            .transpose()?;
        let tls = TlsPaths {
            ca: flags.tls_ca,
            cert: flags.tls_cert,
            key: flags.tls_key,
        }
        .or(TlsPaths {
            ca: file.tls_ca,
            cert: file.tls_cert,
            key: file.tls_key,
        })
        .load()?;
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        if open_door(listen, token.as_ref(), tls.as_ref()) && !insecure {
            return Err(SettingsError::OpenDoor(listen));
        }
        let run_as = match (flags.user.or(file.user), users::running_as_root()) {
            (None, true) => return Err(SettingsError::RootWithoutUser),
            (None, false) => None,
            (Some(user), true) => Some(users::lookup(&user)?),
            (Some(user), false) if user == users::current_user_name() => None,
            (Some(user), false) => return Err(SettingsError::UserNeedsRoot(user)),
        };
        Ok(Settings {
            listen,
            slots,
            max_queued,
            name,
            token,
            run_as,
            grace: Duration::from_secs(flags.grace_secs.or(file.grace_secs).unwrap_or(60)),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            gatekeeper: flags.gatekeeper.or(file.gatekeeper),
            advertise: flags.advertise.or(file.advertise),
            allowed_users: non_empty(flags.allowed_users).or(file.allowed_users),
            allowed_programs: non_empty(flags.allowed_programs)
                .or(file.allowed_programs)
                .unwrap_or_default(),
            limits,
            start_timeout: Duration::from_secs(
                flags
                    .start_timeout_secs
                    .or(file.start_timeout_secs)
                    .unwrap_or(10)
                    .max(1),
            ),
            max_streams_per_peer: flags
                .max_streams_per_peer
                .or(file.max_streams_per_peer)
                .unwrap_or(crate::streams::DEFAULT_MAX_STREAMS_PER_PEER)
                .max(1),
            tls,
        })
    }

    /// Whether the daemon listens beyond loopback without authentication.
    pub fn is_insecure(&self) -> bool {
        open_door(self.listen, self.token.as_ref(), self.tls.as_ref())
    }

    /// How clients are authenticated, for the start-up log.
    pub fn auth_mode(&self) -> &'static str {
        match (&self.tls, &self.token) {
            (Some(_), Some(_)) => "mutual TLS and token",
            (Some(_), None) => "mutual TLS",
            (None, Some(_)) => "token",
            (None, None) => "none",
        }
    }
}

/// Whether a daemon would serve anyone who reaches it.
pub fn open_door(listen: SocketAddr, token: Option<&Token>, tls: Option<&Tls>) -> bool {
    tls.is_none() && mexec_common::token::open_door(listen, token)
}

/// The job limits: a flag over the file over the default; 0 turns one off.
fn job_limits(flags: &Flags, file: &FileConfig) -> JobLimits {
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
        stdin_bytes_per_sec: pick(
            None,
            file.max_stdin_bytes_per_sec,
            defaults.stdin_bytes_per_sec,
        ),
    }
}

fn non_empty(list: Vec<String>) -> Option<Vec<String>> {
    let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
    (!list.is_empty()).then_some(list)
}

fn cpu_count() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            // Tests run as root in CI; give an account so the root rule passes.
            user: users::running_as_root().then(|| "nobody".to_owned()),
            ..Flags::default()
        }
    }

    #[test]
    fn defaults_are_loopback_and_one_slot_per_cpu() {
        let s = Settings::resolve(flags()).unwrap();
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.listen.port(), DEFAULT_PORT);
        assert_eq!(s.slots, cpu_count());
        assert_eq!(s.max_queued, s.slots);
        assert!(!s.is_insecure());
    }

    #[test]
    fn open_listen_needs_a_token_or_insecure() {
        let mut f = flags();
        f.listen = Some("0.0.0.0:7460".parse().unwrap());
        let err = Settings::resolve(f).unwrap_err().to_string();
        assert!(err.contains("refusing to listen on 0.0.0.0:7460"), "{err}");
        let mut f = flags();
        f.listen = Some("0.0.0.0:7460".parse().unwrap());
        f.insecure = true;
        assert!(Settings::resolve(f).unwrap().is_insecure());
    }

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mexecd.toml");
        std::fs::write(&path, "slots = 3\nname = \"from-file\"\n").unwrap();
        let mut f = flags();
        f.config = Some(path.clone());
        f.name = Some("from-flag".into());
        let s = Settings::resolve(f).unwrap();
        assert_eq!((s.slots, s.name.as_str()), (3, "from-flag"));

        std::fs::write(&path, "slotz = 3\n").unwrap();
        let mut f = flags();
        f.config = Some(path);
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
        f.listen = Some("0.0.0.0:7460".parse().unwrap());
        f.tls_ca = Some(ca_pem.clone());
        f.tls_cert = Some(cert);
        f.tls_key = Some(key);
        let s = Settings::resolve(f).unwrap();
        assert!(!s.is_insecure());
        assert_eq!(s.auth_mode(), "mutual TLS");

        let mut f = flags();
        f.tls_ca = Some(ca_pem);
        let err = Settings::resolve(f).unwrap_err().to_string();
        assert!(err.contains("missing: --tls-cert, --tls-key"), "{err}");
    }

    #[test]
    fn limits_take_flags_over_the_file_and_zero_turns_one_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mexecd.toml");
        std::fs::write(
            &path,
            "max_wall_secs = 60\nmax_output_mib = 0\nmax_cpu_secs = 5\n",
        )
        .unwrap();
        let mut f = flags();
        f.config = Some(path);
        f.max_cpu_secs = Some(7);
        let limits = Settings::resolve(f).unwrap().limits;
        assert_eq!(limits.wall, Some(Duration::from_secs(60)));
        assert_eq!(limits.cpu, Some(Duration::from_secs(7)));
        assert_eq!(limits.output_bytes, None);
        assert_eq!(limits.open_files, Some(4096), "the default");
    }

    #[test]
    fn root_needs_an_account_for_jobs_and_others_run_jobs_as_themselves() {
        let result = Settings::resolve(Flags::default());
        if users::running_as_root() {
            assert!(matches!(result, Err(SettingsError::RootWithoutUser)));
        } else {
            assert!(result.unwrap().run_as.is_none());
        }
    }
}
