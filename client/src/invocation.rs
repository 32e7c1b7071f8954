//! How `mexec` was started, and the command that follows.
//!
//! - `mexec [OPTIONS] [--] CMD ARGS`: our options first (only long ones,
//!   `-n` and `-e`, none of which a compiler uses as its first argument).
//! - `mexec CMD ARGS`: the first argument is a program.
//! - `CC=mexec`: make runs `mexec -c foo.c ...`; an option or a source file
//!   first means "the compiler", which is `$MEXEC_CC` or `cc`.
//! - masquerade: a symlink named `gcc` (or cc, g++, ...) pointing at mexec.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::flags::Flags;
use crate::origin::Origin;

/// The form `mexec` was started in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// `mexec [OPTIONS] [--] CMD ARGS`.
    Options,
    /// `mexec CMD ARGS`.
    Command,
    /// `CC=mexec`: the arguments are a compiler's.
    Compiler,
    /// Started through a symlink with this name.
    Masquerade(OsString),
}

/// A parsed command line.
#[derive(Debug)]
pub struct Invocation {
    pub form: Form,
    pub flags: Flags,
    /// The arguments after the program (the program is decided later for
    /// the compiler and masquerade forms).
    pub args: Vec<OsString>,
}

/// Source and object file endings that mean "these are compiler arguments".
const COMPILER_INPUTS: &[&str] = &[
    "c", "cc", "cp", "cpp", "cxx", "c++", "C", "CPP", "i", "ii", "s", "S", "sx", "m", "mm", "o",
    "a", "so",
];

/// Parses the command line of `origin`, with its `MEXEC_*` variables.
pub fn parse(origin: &Origin) -> Result<Invocation, clap::Error> {
    let argv = &origin.argv;
    let name = program_name(argv.first().map(OsString::as_os_str).unwrap_or_default());
    let rest: Vec<OsString> = argv.iter().skip(1).cloned().collect();
    if !is_our_name(&name) {
        return Ok(Invocation {
            form: Form::Masquerade(name),
            flags: env_only_flags(origin)?,
            args: rest,
        });
    }
    let form = match rest.first() {
        None => Form::Options,
        Some(first) if is_our_option(first) => Form::Options,
        Some(first) if looks_like_compiler_argument(first) => Form::Compiler,
        Some(_) => Form::Command,
    };
    if form == Form::Options && rest.first().is_some_and(|first| first == "--") {
        // `mexec -- CMD`, as scripts write it: no options to parse, and
        // what follows is the command, as clap would have it.
        return Ok(Invocation {
            form,
            flags: env_only_flags(origin)?,
            args: rest[1..].to_vec(),
        });
    }
    if form == Form::Options {
        let mut flags = options_flags(origin)?;
        let args = std::mem::take(&mut flags.command);
        return Ok(Invocation { form, flags, args });
    }
    Ok(Invocation {
        form,
        flags: env_only_flags(origin)?,
        args: rest,
    })
}

/// Whether `name` is one of mexec's own binaries rather than a masquerade.
fn is_our_name(name: &OsStr) -> bool {
    name == crate::binaries::FRONT || name == crate::binaries::FULL_CLIENT
}

/// Our options, and the `MEXEC_*` variables for those not given. In our
/// own process clap reads the variables (and `--help` names them); for
/// another's (in the agent) the options are parsed without variables and
/// laid over that process's, read as the other forms read them.
fn options_flags(origin: &Origin) -> Result<Flags, clap::Error> {
    if origin.own_process {
        return Flags::try_parse_from(&origin.argv);
    }
    // Made once: building the parser costs more than a parse.
    static PARSER: OnceLock<Mutex<clap::Command>> = OnceLock::new();
    let parser = PARSER.get_or_init(|| Mutex::new(Flags::command().mut_args(|arg| arg.env(None))));
    let matches = match parser.lock() {
        Ok(mut parser) => parser.try_get_matches_from_mut(&origin.argv)?,
        Err(_) => return Err(clap::Error::new(clap::error::ErrorKind::Io)),
    };
    let given = Flags::from_arg_matches(&matches)?;
    Ok(given.or(env_only_flags(origin)?))
}

/// The name we were started as, without directory or `.exe`.
pub fn program_name(argv0: &OsStr) -> OsString {
    let base = Path::new(argv0)
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    let text = base.to_string_lossy();
    match text.strip_suffix(".exe") {
        Some(stem) => OsString::from(stem),
        None => base,
    }
}

/// Flags from the environment alone, for the forms with no room for ours.
/// Read by hand rather than through clap: these forms run once per
/// compile, and building the parser costs more than the rest of start-up.
fn env_only_flags(origin: &Origin) -> Result<Flags, clap::Error> {
    Flags::from_env(|name| origin.var(name))
        .map_err(|message| clap::Error::raw(clap::error::ErrorKind::InvalidValue, message))
}

fn is_our_option(arg: &OsStr) -> bool {
    let Some(arg) = arg.to_str() else {
        return false;
    };
    // `--version`, `-V` and `-v` are left to the compiler: build systems
    // probe `$CC --version`, and with CC=mexec that must reach the compiler.
    if matches!(arg, "--" | "-n" | "-e" | "-h" | "--help") {
        return true;
    }
    let Some(long) = arg.strip_prefix("--") else {
        return false;
    };
    let long = long.split('=').next().unwrap_or(long);
    OUR_LONG_OPTIONS.contains(&long)
}

/// mexec's long options (a test checks this against the parser).
const OUR_LONG_OPTIONS: &[&str] = &[
    "config",
    "nodes",
    "require",
    "token-file",
    "tls-ca",
    "tls-cert",
    "tls-key",
    "munge",
    "munge-socket",
    "gatekeeper",
    "relay",
    "no-local",
    "retry",
    "no-stdin",
    "timeout",
    "explain",
    "placement",
    "joblog",
    "map",
    "env",
    "forward-env",
    "cluster-os",
    "status",
    "watch",
    "usage",
    "json",
    "mexec-version",
    "help",
];

fn looks_like_compiler_argument(arg: &OsStr) -> bool {
    let bytes = arg.as_encoded_bytes();
    if bytes.first() == Some(&b'-') {
        return true;
    }
    Path::new(arg)
        .extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| COMPILER_INPUTS.contains(&ext))
}

/// Whether `argv` is a compiler invocation that is safe to run twice: a
/// known compiler driver with `-c`, `-S` or `-E`, which writes only its
/// named output and can be repeated after a lost node.
pub fn is_repeatable_compile(argv: &[OsString]) -> bool {
    compiler_arguments(argv)
        .is_some_and(|args| args.iter().any(|a| a == "-c" || a == "-S" || a == "-E"))
}

/// Whether `argv` may read stdin. A compiler reads it only when an input
/// file is `-`; forwarding it anyway would take input meant for the next
/// command of a script.
pub fn may_read_stdin(argv: &[OsString]) -> bool {
    match compiler_arguments(argv) {
        Some(args) => args
            .iter()
            .enumerate()
            .any(|(i, a)| a == "-" && (i == 0 || args[i - 1] != "-o")),
        None => true,
    }
}

/// The arguments after the program when the program is a compiler driver.
fn compiler_arguments(argv: &[OsString]) -> Option<&[OsString]> {
    let (program, args) = argv.split_first()?;
    is_compiler_name(&program_name(program)).then_some(args)
}

/// Compiler drivers, also with a target prefix (`x86_64-linux-gnu-gcc`)
/// or a version suffix (`gcc-12`, `clang-16`).
pub fn is_compiler_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let name = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let name = name.strip_suffix('-').unwrap_or(name);
    ["cc", "gcc", "g++", "c++", "clang", "clang++"]
        .iter()
        .any(|driver| name == *driver || name.ends_with(&format!("-{driver}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    /// Another process's command line (as the agent gets it), with `env`.
    fn origin_with(words: &[&str], env: &[(&str, &str)]) -> Origin {
        Origin {
            argv: argv(words),
            env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            cwd: Ok("/".into()),
            umask: 0o022,
            pid: 1,
            exe: "/usr/bin/mexec".into(),
            stdin_terminal: false,
            stdin_null: true,
            build_scope: "1".into(),
            own_process: false,
        }
    }

    fn origin(words: &[&str]) -> Origin {
        origin_with(words, &[])
    }

    #[test]
    fn options_of_another_process_are_laid_over_its_variables() {
        let env = [
            ("MEXEC_NODES", "a:1"),
            ("MEXEC_RETRY", "1"),
            ("MEXEC_TIMEOUT", "9"),
        ];
        let inv = parse(&origin_with(&["mexec", "--no-local", "--", "true"], &env)).unwrap();
        assert_eq!(inv.form, Form::Options);
        assert!(inv.flags.no_local && inv.flags.retry);
        assert_eq!(inv.flags.nodes.as_deref(), Some("a:1"));
        assert_eq!(inv.flags.timeout, Some(9));
        let inv = parse(&origin_with(
            &["mexec", "--nodes", "b:2", "--", "true"],
            &env,
        ))
        .unwrap();
        assert_eq!(inv.flags.nodes.as_deref(), Some("b:2"), "the option wins");
        // The agent's own environment plays no part.
        let inv = parse(&origin(&["mexec", "--", "true"])).unwrap();
        assert!(inv.flags.nodes.is_none() && !inv.flags.retry);
        // Bad values are errors as in clap's reading of the variables.
        let bad = [("MEXEC_TIMEOUT", "soon")];
        assert!(parse(&origin_with(&["mexec", "--", "true"], &bad)).is_err());
    }

    #[test]
    fn a_double_dash_first_leaves_everything_after_it_to_the_command() {
        let env = [("MEXEC_RETRY", "1")];
        let inv = parse(&origin_with(&["mexec", "--", "make", "--nodes", "x"], &env)).unwrap();
        assert_eq!(inv.form, Form::Options);
        assert_eq!(inv.args, argv(&["make", "--nodes", "x"]));
        assert!(inv.flags.retry && inv.flags.nodes.is_none());
    }

    #[test]
    fn both_binaries_are_mexec_not_a_masquerade() {
        for name in ["mexec", "/usr/bin/mexec-client"] {
            let inv = parse(&origin(&[name, "--", "true"])).unwrap();
            assert_eq!(inv.form, Form::Options, "{name}");
        }
    }

    #[test]
    fn options_then_command() {
        let inv = parse(&origin(&["mexec", "--no-local", "--", "make", "-j2"])).unwrap();
        assert_eq!(inv.form, Form::Options);
        assert!(inv.flags.no_local);
        assert_eq!(inv.args, argv(&["make", "-j2"]));

        let inv = parse(&origin(&["/usr/bin/mexec", "-n", "cat", "-v"])).unwrap();
        assert!(inv.flags.no_stdin);
        assert_eq!(inv.args, argv(&["cat", "-v"]));

        let inv = parse(&origin(&[
            "mexec", "-e", "CFLAGS", "--map", "S:\\=/s", "make",
        ]))
        .unwrap();
        assert_eq!(inv.form, Form::Options);
        assert_eq!(inv.flags.env, ["CFLAGS"]);
        assert_eq!(inv.flags.map, ["S:\\=/s"]);
        assert_eq!(inv.args, argv(&["make"]));

        let inv = parse(&origin(&["mexec", "--nodes=a:1", "gcc", "-c", "x.c"])).unwrap();
        assert_eq!(inv.flags.nodes.as_deref(), Some("a:1"));
        assert_eq!(inv.args, argv(&["gcc", "-c", "x.c"]));
    }

    #[test]
    fn plain_command_keeps_its_options() {
        let inv = parse(&origin(&["mexec", "gcc", "--version"])).unwrap();
        assert_eq!(inv.form, Form::Command);
        assert_eq!(inv.args, argv(&["gcc", "--version"]));
    }

    #[test]
    fn cc_form_is_recognised_by_an_option_or_a_source_file() {
        let inv = parse(&origin(&["mexec", "-c", "foo.c", "-o", "foo.o"])).unwrap();
        assert_eq!(inv.form, Form::Compiler);
        assert_eq!(inv.args.len(), 4);
        assert_eq!(
            parse(&origin(&["mexec", "foo.c"])).unwrap().form,
            Form::Compiler
        );
        assert_eq!(
            parse(&origin(&["mexec", "a.o", "b.o"])).unwrap().form,
            Form::Compiler
        );
        // A compiler's `-v`, `--version`, `--verbose` are not ours.
        for flag in ["-v", "--version", "-V", "--verbose"] {
            assert_eq!(
                parse(&origin(&["mexec", flag])).unwrap().form,
                Form::Compiler,
                "{flag}"
            );
        }
    }

    #[test]
    fn masquerade_names_are_kept() {
        let inv = parse(&origin(&["/opt/mexec/bin/g++", "-c", "x.cc"])).unwrap();
        assert_eq!(inv.form, Form::Masquerade("g++".into()));
        assert_eq!(inv.args, argv(&["-c", "x.cc"]));
        assert_eq!(program_name(OsStr::new("mexec.exe")), "mexec");
    }

    #[test]
    fn the_option_list_matches_the_parser() {
        use clap::CommandFactory;
        let mut from_parser: Vec<String> = Flags::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        from_parser.push("help".into());
        from_parser.sort();
        let mut listed: Vec<String> = OUR_LONG_OPTIONS.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(listed, from_parser);
    }

    #[test]
    fn environment_flags_read_by_hand_match_the_parser() {
        let env: std::collections::HashMap<&str, &str> = [
            ("MEXEC_NODES", "a:1,b:2/4"),
            ("MEXEC_NO_LOCAL", "1"),
            ("MEXEC_RETRY", "false"),
            ("MEXEC_NO_STDIN", "yes"),
            ("MEXEC_TIMEOUT", "30"),
            ("MEXEC_PLACEMENT", "random"),
            ("MEXEC_JOBLOG", "/tmp/j"),
            ("MEXEC_GATEKEEPER", "g:1"),
            ("MEXEC_FORWARD_ENV", "on"),
            ("MEXEC_CLUSTER_OS", "freebsd"),
        ]
        .into();
        let by_hand = Flags::from_env(|k| env.get(k).map(OsString::from)).unwrap();
        assert_eq!(by_hand.nodes.as_deref(), Some("a:1,b:2/4"));
        assert!(by_hand.no_local && !by_hand.retry && by_hand.no_stdin);
        assert_eq!(by_hand.timeout, Some(30));
        assert_eq!(by_hand.placement, Some(crate::placement::Policy::Random));
        assert_eq!(by_hand.gatekeeper.as_deref(), Some("g:1"));
        assert!(by_hand.forward_env);
        assert_eq!(by_hand.cluster_os.as_deref(), Some("freebsd"));
        assert!(Flags::from_env(|k| (k == "MEXEC_TIMEOUT").then(|| "soon".into())).is_err());
    }

    #[test]
    fn repeatable_compiles() {
        assert!(is_repeatable_compile(&argv(&["gcc", "-c", "x.c"])));
        assert!(is_repeatable_compile(&argv(&[
            "/usr/bin/x86_64-linux-gnu-gcc-12",
            "-O2",
            "-S",
            "x.c"
        ])));
        assert!(is_repeatable_compile(&argv(&["clang++-16", "-E", "x.cc"])));
        assert!(!is_repeatable_compile(&argv(&["gcc", "x.o", "-o", "prog"])));
        assert!(!is_repeatable_compile(&argv(&["sh", "-c", "rm -rf out"])));
        assert!(!is_repeatable_compile(&argv(&["ccache"])));
    }

    #[test]
    fn compilers_read_stdin_only_for_an_input_named_dash() {
        assert!(may_read_stdin(&argv(&["sort", "-u"])));
        assert!(!may_read_stdin(&argv(&["gcc", "-c", "x.c"])));
        assert!(may_read_stdin(&argv(&["gcc", "-x", "c", "-c", "-"])));
        assert!(!may_read_stdin(&argv(&["gcc", "-E", "x.c", "-o", "-"])));
    }
}
