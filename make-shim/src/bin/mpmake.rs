//! `mpmake`: GNU make on the mexec farm, with its parallelism sized to the
//! live cluster and kept in step with it.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use clap::Parser;
use mexec_common::connector::Connector;
use mexec_common::farm::Farm;
use mexec_make_shim::args::{self, Cli};
use mexec_make_shim::capacity::{self, Capacity};
use mexec_make_shim::progress::Progress;
use mexec_make_shim::routing::{self, Routing};
use mexec_make_shim::signals;
use mexec_make_shim::summary::Summary;
use mexec_make_shim::tokens::TokenPool;

/// mpmake's own failures, as mexec's.
const EXIT_FAILURE: i32 = 255;

fn main() {
    std::process::exit(real_main());
}

fn say(message: impl std::fmt::Display) {
    eprintln!("mpmake: {message}");
}

/// Why make could not be run: said on stderr, and mpmake exits 255.
struct Failed(String);

fn real_main() -> i32 {
    let cli = Cli::parse();
    let (farm, _) = match Farm::resolve(&cli.farm_flags()) {
        Ok(resolved) => resolved,
        Err(err) => {
            say(err);
            return EXIT_FAILURE;
        }
    };
    let connector = farm.connector();
    let started = Instant::now();
    let mut measured = capacity::measure(&farm, &connector);
    if let (Err(why), Some(gatekeeper)) = (&measured, &farm.gatekeeper) {
        measured = capacity::cached_members(gatekeeper, &connector, why);
    }
    if cli.print_jobs {
        return print_jobs(measured);
    }
    let initial = capacity_or_this_machine(measured);
    match build(&cli, farm, connector, initial, started) {
        Ok(code) => code,
        Err(Failed(message)) => {
            say(message);
            EXIT_FAILURE
        }
    }
}

/// `--print-jobs`: the capacity alone, for another build tool's `-j`.
/// It always prints a number: with no node up, this machine's CPUs (and
/// says so on stderr), since `ninja -j$(mpmake --print-jobs)` must not
/// become `ninja -j`.
fn print_jobs(measured: Result<Capacity, String>) -> i32 {
    println!("{}", capacity_or_this_machine(measured).slots.max(1));
    0
}

/// The cluster's capacity, or this machine's CPUs when no node is up (the
/// jobs then run locally).
fn capacity_or_this_machine(measured: Result<Capacity, String>) -> Capacity {
    let why = match measured {
        Ok(capacity) if capacity.slots > 0 => return capacity,
        Ok(_) => "no node is up".to_owned(),
        Err(err) => err,
    };
    let cpus = mexec_common::host::cpu_count();
    say(format!(
        "{why}; sizing make for this machine's {cpus} CPUs (jobs run locally)"
    ));
    Capacity {
        slots: cpus,
        nodes: Vec::new(),
    }
}

/// Runs make on the farm, from the masquerade to the summary; make's exit
/// code, or why it could not run.
fn build(
    cli: &Cli,
    farm: Farm,
    connector: Connector,
    initial: Capacity,
    started: Instant,
) -> Result<i32, Failed> {
    let mexec = routing::find_mexec()
        .ok_or_else(|| Failed("cannot find the mexec binary (beside mpmake or on PATH)".into()))?;
    let build_id = format!(
        "{}:mpmake-{}",
        mexec_common::host::name(),
        std::process::id()
    );
    let routing = routing::prepare(&mexec, &cli.make_args, &build_id)
        .map_err(|err| Failed(format!("cannot prepare the compiler masquerade: {err}")))?;
    // An explicit -jN wins, and make's own jobserver is left alone.
    let mut pool = if args::has_jobs_flag(&cli.make_args) {
        None
    } else {
        let tokens = initial.slots.saturating_sub(1) as usize;
        let pool = TokenPool::new(tokens)
            .map_err(|err| Failed(format!("cannot create the jobserver: {err}")))?;
        Some(pool)
    };
    let mut child = make_command(cli, &routing, pool.as_ref())
        .spawn()
        .map_err(|err| Failed(format!("cannot run {}: {err}", cli.make.to_string_lossy())))?;
    signals::forward_to(child.id());

    let live = !cli.quiet && std::io::stderr().is_terminal();
    let watch = capacity::Watch::start(
        farm,
        connector,
        Duration::from_secs_f64(cli.poll_secs.max(0.1)),
    );
    let mut follow = Follow {
        pool: pool.as_mut(),
        progress: Progress::new(routing.joblog.clone()),
        live,
        timeline: vec![(0.0, initial.slots)],
        current: initial,
        started,
    };
    let status = follow.until_exit(&mut child, &watch);
    drop(watch);
    follow.progress.clear();
    let code = match status {
        Ok(status) => exit_code(status),
        Err(err) => {
            say(format!("lost track of make: {err}"));
            EXIT_FAILURE
        }
    };
    let Follow { timeline, .. } = follow;
    summarize(cli, live, &routing, pool, timeline, started, code);
    Ok(code)
}

/// make with the routing's arguments and environment, the farm's location
/// passed on to the `mexec` it starts, and our jobserver.
fn make_command(cli: &Cli, routing: &Routing, pool: Option<&TokenPool>) -> Command {
    let mut make = Command::new(&cli.make);
    make.args(&routing.make_args)
        .envs(routing.env.iter().cloned());
    let farm_variables: [(&str, Option<&OsStr>); 8] = [
        ("MEXEC_NODES", cli.nodes.as_deref().map(OsStr::new)),
        (
            "MEXEC_GATEKEEPER",
            cli.gatekeeper.as_deref().map(OsStr::new),
        ),
        (
            "MEXEC_TOKEN_FILE",
            cli.token_file.as_deref().map(Path::as_os_str),
        ),
        ("MEXEC_TLS_CA", cli.tls_ca.as_deref().map(Path::as_os_str)),
        (
            "MEXEC_TLS_CERT",
            cli.tls_cert.as_deref().map(Path::as_os_str),
        ),
        ("MEXEC_TLS_KEY", cli.tls_key.as_deref().map(Path::as_os_str)),
        ("MEXEC_MUNGE", cli.munge.then_some(OsStr::new("1"))),
        (
            "MEXEC_MUNGE_SOCKET",
            cli.munge_socket.as_deref().map(Path::as_os_str),
        ),
    ];
    for (var, value) in farm_variables {
        if let Some(value) = value {
            make.env(var, value);
        }
    }
    if let Some(pool) = pool {
        pool.client().configure_make(&mut make);
    }
    make
}

/// make running: the jobserver kept at the cluster's capacity, the live
/// line, and each change of capacity noted for the summary.
struct Follow<'a> {
    pool: Option<&'a mut TokenPool>,
    progress: Progress,
    live: bool,
    /// Seconds since the start, and the capacity from then on.
    timeline: Vec<(f64, u32)>,
    current: Capacity,
    started: Instant,
}

impl Follow<'_> {
    fn until_exit(
        &mut self,
        child: &mut Child,
        watch: &capacity::Watch,
    ) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if let Some(latest) = watch.latest() {
                if latest.slots != self.current.slots {
                    let at = self.started.elapsed().as_secs_f64();
                    self.timeline.push((at, latest.slots));
                }
                self.current = latest;
            }
            if let Some(pool) = &mut self.pool {
                // No node up is no reason to stop make: keep one slot going.
                if let Err(err) = pool.set_target(self.current.slots.max(1) as usize - 1) {
                    say(format!("jobserver: {err}"));
                }
            }
            if self.live {
                self.progress.update();
                self.progress.draw(Some(&self.current));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The summary from the job log, with the capacity's changes and the
/// jobserver's token count.
fn summarize(
    cli: &Cli,
    live: bool,
    routing: &Routing,
    pool: Option<TokenPool>,
    timeline: Vec<(f64, u32)>,
    started: Instant,
    code: i32,
) {
    let mut summary = Summary::from_joblog(&routing.joblog).finish(started.elapsed(), code);
    summary.capacity = timeline;
    if let Some(pool) = pool {
        match pool.finish() {
            Ok(account) => {
                if account.minted != account.accounted {
                    say(format!(
                        "jobserver tokens: {} written, {} found at the end (make lost or added some)",
                        account.minted, account.accounted
                    ));
                }
                summary.tokens = Some(account);
            }
            Err(err) => say(format!("jobserver: cannot count tokens: {err}")),
        }
    }
    if cli.json {
        eprintln!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else if cli.summary || live {
        eprint!("{}", summary.table());
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => EXIT_FAILURE,
    }
}
