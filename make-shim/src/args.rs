//! The command line: mpmake's options (long ones, before make's arguments)
//! and make's arguments, passed through untouched except for `CC=`/`CXX=`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use mexec_common::farm::FarmFlags;

/// mpmake's flags; everything from the first argument it does not know on
/// belongs to make.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mpmake",
    version,
    about = "Run GNU make on the mexec farm, with -j sized to the live cluster"
)]
pub struct Cli {
    /// Executors, host:port[/slots],... (else MEXEC_NODES or the config).
    #[arg(long, env = "MEXEC_NODES")]
    pub nodes: Option<String>,
    /// Gatekeeper to ask for capacity and placement.
    #[arg(long, env = "MEXEC_GATEKEEPER")]
    pub gatekeeper: Option<String>,
    /// File holding the cluster's shared token.
    #[arg(long, env = "MEXEC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate, for mutual TLS.
    #[arg(long, env = "MEXEC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Your user certificate.
    #[arg(long, env = "MEXEC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Your private key.
    #[arg(long, env = "MEXEC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Prove who you are with MUNGE (the mexec jobs make starts do too).
    #[arg(long, env = "MEXEC_MUNGE")]
    pub munge: bool,
    /// munged's socket [default: libmunge's].
    #[arg(long, env = "MEXEC_MUNGE_SOCKET")]
    pub munge_socket: Option<PathBuf>,
    /// Print the cluster's capacity (for `ninja -j$(mpmake --print-jobs)`) and exit.
    #[arg(long)]
    pub print_jobs: bool,
    /// Print the summary even when stderr is not a terminal.
    #[arg(long)]
    pub summary: bool,
    /// Print the summary as JSON (on stderr), for scripts.
    #[arg(long)]
    pub json: bool,
    /// No live status line.
    #[arg(long)]
    pub quiet: bool,
    /// The make to run.
    #[arg(long, env = "MPMAKE_MAKE", default_value = "make")]
    pub make: OsString,
    /// Seconds between capacity checks.
    #[arg(long, default_value_t = 1.0)]
    pub poll_secs: f64,
    /// Arguments for make (targets, variables, -C, -k, -jN ...).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    pub make_args: Vec<OsString>,
}

impl Cli {
    /// Where the farm is, the way `mexec` reads it.
    pub fn farm_flags(&self) -> FarmFlags {
        FarmFlags {
            nodes: self.nodes.clone(),
            gatekeeper: self.gatekeeper.clone(),
            token_file: self.token_file.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            munge: self.munge,
            munge_socket: self.munge_socket.clone(),
            config: std::env::var_os("MEXEC_CONFIG").map(PathBuf::from),
        }
    }
}

/// Whether make's arguments already say how many jobs (`-j`, `-j8`,
/// `--jobs`, `--jobs=8`, or `j` in a bundle like `-kj4`).
pub fn has_jobs_flag(make_args: &[OsString]) -> bool {
    make_args.iter().any(|a| {
        let Some(a) = a.to_str() else { return false };
        if a == "--jobs" || a.starts_with("--jobs=") {
            return true;
        }
        match a.strip_prefix('-') {
            Some(bundle) if !bundle.starts_with('-') => {
                // Letters before any that takes a value (-C, -f, -I, -o, -W,
                // -l...) are flags; `j` among them is ours to see.
                for c in bundle.chars() {
                    match c {
                        'j' => return true,
                        'C' | 'f' | 'I' | 'o' | 'W' | 'l' | 'O' => return false,
                        _ => {}
                    }
                }
                false
            }
            _ => false,
        }
    })
}

/// A `NAME=value` make argument, split.
pub fn variable(arg: &OsString) -> Option<(&str, &str)> {
    let text = arg.to_str()?;
    if text.starts_with('-') {
        return None;
    }
    let (name, value) = text.split_once('=')?;
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn jobs_flags_are_found_in_all_their_forms() {
        for form in [
            &["-j"][..],
            &["-j8"],
            &["--jobs"],
            &["--jobs=3"],
            &["-kj4"],
            &["-k", "-j", "2"],
        ] {
            assert!(has_jobs_flag(&args(form)), "{form:?}");
        }
        for form in [
            &["-k"][..],
            &["-C", "dir"],
            &["-Cj"],
            &["all", "CFLAGS=-j"],
            &["--keep-going"],
        ] {
            assert!(!has_jobs_flag(&args(form)), "{form:?}");
        }
    }

    #[test]
    fn variables_are_split() {
        assert_eq!(variable(&"CC=gcc-12".into()), Some(("CC", "gcc-12")));
        assert_eq!(
            variable(&"CFLAGS=-O2 -g".into()),
            Some(("CFLAGS", "-O2 -g"))
        );
        assert_eq!(variable(&"all".into()), None);
        assert_eq!(variable(&"-DX=1".into()), None);
    }

    #[test]
    fn make_arguments_pass_through_after_our_options() {
        let cli =
            Cli::try_parse_from(["mpmake", "--summary", "-k", "-C", "src", "all", "CC=clang"])
                .unwrap();
        assert!(cli.summary);
        assert_eq!(cli.make_args, args(&["-k", "-C", "src", "all", "CC=clang"]));
    }
}
