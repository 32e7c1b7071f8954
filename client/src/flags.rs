//! The command line of `mexec`, and the same flags from `MEXEC_*`
//! variables for the forms that leave no room for options.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use mexec_common::farm::FarmFlags;

/// Flags of `mexec`; each also reads a `MEXEC_*` variable where it makes sense.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mexec",
    version,
    // `--version` belongs to the compiler in the CC=mexec form.
    disable_version_flag = true,
    about = "Run a command on the least-loaded node of the mexec farm",
    after_help = "Forms: mexec [OPTIONS] -- CMD ARGS | mexec CMD ARGS | CC=mexec (runs $MEXEC_CC, \
                  else cc) | a symlink named cc, gcc, g++, c++, clang or clang++ to mexec"
)]
pub struct Flags {
    /// Client config file [default: ~/.config/mexec/config.toml when present].
    #[arg(long, env = "MEXEC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Executors: host:port[/slots],...
    #[arg(long, env = "MEXEC_NODES")]
    pub nodes: Option<String>,
    /// File holding the cluster's shared token.
    #[arg(long, env = "MEXEC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM), for mutual TLS.
    #[arg(long, env = "MEXEC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Your user certificate (PEM), from `mexec-cert user`.
    #[arg(long, env = "MEXEC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, env = "MEXEC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Prove who you are with MUNGE: each job and lease carries a
    /// credential from the local munged.
    #[arg(long, env = "MEXEC_MUNGE", value_parser = boolish())]
    pub munge: bool,
    /// munged's socket [default: libmunge's, /run/munge/munge.socket.2].
    #[arg(long, env = "MEXEC_MUNGE_SOCKET")]
    pub munge_socket: Option<PathBuf>,
    /// Gatekeeper to ask for placement (host:port).
    #[arg(long, env = "MEXEC_GATEKEEPER")]
    pub gatekeeper: Option<String>,
    /// Send the whole job through the gatekeeper (for clients outside the
    /// cluster, which cannot reach the executors).
    #[arg(long, env = "MEXEC_RELAY", value_parser = boolish())]
    pub relay: bool,
    /// Fail instead of running locally when no node can take the job.
    #[arg(long, env = "MEXEC_NO_LOCAL", value_parser = boolish())]
    pub no_local: bool,
    /// Retry on another node if the node is lost mid-job (compiles always are).
    #[arg(long, env = "MEXEC_RETRY", value_parser = boolish())]
    pub retry: bool,
    /// Do not forward standard input (the job reads /dev/null).
    #[arg(short = 'n', long = "no-stdin", env = "MEXEC_NO_STDIN", value_parser = boolish())]
    pub no_stdin: bool,
    /// Kill the job after this many seconds.
    #[arg(long, env = "MEXEC_TIMEOUT")]
    pub timeout: Option<u64>,
    /// Say on stderr where each job goes and why it moves.
    #[arg(long = "explain", env = "MEXEC_EXPLAIN", value_parser = boolish())]
    pub verbose: bool,
    /// How to choose among nodes without a gatekeeper: load (default),
    /// random or round-robin (the last two for comparisons).
    #[arg(long, env = "MEXEC_PLACEMENT")]
    pub placement: Option<crate::placement::Policy>,
    /// Append one JSON line per job to this file.
    #[arg(long, env = "MEXEC_JOBLOG")]
    pub joblog: Option<PathBuf>,
    /// Map a path prefix of this machine to the executors' name of the same
    /// tree: LOCAL=REMOTE, for example 'S:\src=/export/src' (repeatable;
    /// also MEXEC_MAP, rules separated by ';').
    #[arg(long = "map", value_name = "LOCAL=REMOTE")]
    pub map: Vec<String>,
    /// Send this variable (from here, or with this value) to the job
    /// (repeatable; also MEXEC_ENV, names separated by ',').
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Send this machine's whole environment even to executors on another
    /// operating system.
    #[arg(long, env = "MEXEC_FORWARD_ENV")]
    pub forward_env: bool,
    /// The executors' operating system, as Rust names it [default: linux].
    /// A client on another system sends only the variables it is told to,
    /// and needs a --map rule for its working directory.
    #[arg(long, env = "MEXEC_CLUSTER_OS", value_name = "OS")]
    pub cluster_os: Option<String>,
    /// Run only on a node with this property: KEY=VALUE (arch=aarch64),
    /// KEY>=NUMBER (mem_mib>=16000), label:NAME[=VALUE] or cpu:FLAG
    /// (repeatable; also MEXEC_REQUIRE, requirements separated by ',').
    /// A job with requirements never runs locally.
    #[arg(long = "require", value_name = "REQUIREMENT")]
    pub require: Vec<String>,
    /// Show the nodes and their load, then exit.
    #[arg(long)]
    pub status: bool,
    /// With --status: redraw the table every second until interrupted.
    #[arg(long, requires = "status")]
    pub watch: bool,
    /// Show per-user accounting (jobs, slot-, CPU- and wait-seconds over the
    /// last hour, day and week) from the gatekeeper, then exit.
    #[arg(long)]
    pub usage: bool,
    /// With --status or --usage: print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print mexec's version.
    #[arg(long = "mexec-version", action = clap::ArgAction::Version)]
    pub mexec_version: (),
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

/// On/off variables read as the `CC=mexec` form reads them (`from_env`):
/// 1, yes, on (and 0, no, off) as well as true and false.
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

impl Flags {
    /// The flags the `MEXEC_*` variables give, as clap would read them with
    /// no command-line options (booleans: 1/true/yes/on, else off).
    pub fn from_env(var: impl Fn(&str) -> Option<OsString>) -> Result<Flags, String> {
        let text = |name: &str| var(name).map(|v| v.to_string_lossy().into_owned());
        let path = |name: &str| var(name).map(PathBuf::from);
        let flag = |name: &str| {
            text(name).is_some_and(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on" | "y"
                )
            })
        };
        let timeout = match text("MEXEC_TIMEOUT") {
            Some(v) => Some(
                v.parse()
                    .map_err(|_| format!("MEXEC_TIMEOUT: `{v}` is not a number of seconds"))?,
            ),
            None => None,
        };
        let placement = match text("MEXEC_PLACEMENT") {
            Some(v) => Some(v.parse().map_err(|e| format!("MEXEC_PLACEMENT: {e}"))?),
            None => None,
        };
        Ok(Flags {
            config: path("MEXEC_CONFIG"),
            nodes: text("MEXEC_NODES"),
            token_file: path("MEXEC_TOKEN_FILE"),
            tls_ca: path("MEXEC_TLS_CA"),
            tls_cert: path("MEXEC_TLS_CERT"),
            tls_key: path("MEXEC_TLS_KEY"),
            munge: flag("MEXEC_MUNGE"),
            munge_socket: path("MEXEC_MUNGE_SOCKET"),
            gatekeeper: text("MEXEC_GATEKEEPER"),
            relay: flag("MEXEC_RELAY"),
            no_local: flag("MEXEC_NO_LOCAL"),
            retry: flag("MEXEC_RETRY"),
            no_stdin: flag("MEXEC_NO_STDIN"),
            timeout,
            verbose: flag("MEXEC_EXPLAIN"),
            placement,
            joblog: path("MEXEC_JOBLOG"),
            forward_env: flag("MEXEC_FORWARD_ENV"),
            cluster_os: text("MEXEC_CLUSTER_OS"),
            ..Flags::default()
        })
    }
}

impl Flags {
    /// These flags, with `fallback`'s where these give none: options over
    /// variables, as clap lays a command line over the environment. Only
    /// the flags that variables can give are taken from `fallback`.
    pub fn or(self, fallback: Flags) -> Flags {
        Flags {
            config: self.config.or(fallback.config),
            nodes: self.nodes.or(fallback.nodes),
            token_file: self.token_file.or(fallback.token_file),
            tls_ca: self.tls_ca.or(fallback.tls_ca),
            tls_cert: self.tls_cert.or(fallback.tls_cert),
            tls_key: self.tls_key.or(fallback.tls_key),
            munge: self.munge || fallback.munge,
            munge_socket: self.munge_socket.or(fallback.munge_socket),
            gatekeeper: self.gatekeeper.or(fallback.gatekeeper),
            relay: self.relay || fallback.relay,
            no_local: self.no_local || fallback.no_local,
            retry: self.retry || fallback.retry,
            no_stdin: self.no_stdin || fallback.no_stdin,
            timeout: self.timeout.or(fallback.timeout),
            verbose: self.verbose || fallback.verbose,
            placement: self.placement.or(fallback.placement),
            joblog: self.joblog.or(fallback.joblog),
            forward_env: self.forward_env || fallback.forward_env,
            cluster_os: self.cluster_os.or(fallback.cluster_os),
            ..self
        }
    }

    /// Where the farm is, as these flags say.
    pub fn farm(&self) -> FarmFlags {
        FarmFlags {
            config: self.config.clone(),
            nodes: self.nodes.clone(),
            gatekeeper: self.gatekeeper.clone(),
            token_file: self.token_file.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            munge: self.munge,
            munge_socket: self.munge_socket.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option clap fills from a variable is read by `from_env` and
    /// kept by `or`: the agent reads them so, for another process's
    /// environment.
    #[test]
    fn every_variable_of_the_parser_is_read_by_hand_and_merged() {
        let none = format!("{:?}", Flags::default());
        let mut seen = 0;
        for arg in Flags::command().get_arguments() {
            let Some(name) = arg.get_env().and_then(|n| n.to_str()) else {
                continue;
            };
            let value = match arg.get_id().as_str() {
                "timeout" => "5",
                "placement" => "random",
                _ if arg.get_num_args().is_some_and(|n| n.takes_values()) => "x",
                _ => "1",
            };
            let from_env = Flags::from_env(|k| (k == name).then(|| value.into())).unwrap();
            let merged = format!("{:?}", Flags::default().or(from_env));
            assert_ne!(merged, none, "{name} is not read by hand, or not merged");
            seen += 1;
        }
        assert_eq!(seen, 19);
    }
}
