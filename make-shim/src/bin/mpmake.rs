//! `mpmake`: GNU make on the mexec farm, with its parallelism sized to the
//! live cluster and kept in step with it.

use std::io::IsTerminal;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use clap::Parser;
use mexec_client::settings::Settings;
use mexec_make_shim::args::{self, Cli};
use mexec_make_shim::capacity::{self, Capacity};
use mexec_make_shim::progress::Progress;
use mexec_make_shim::summary::Summary;
use mexec_make_shim::tokens::TokenPool;
use mexec_make_shim::{routing, signals};

/// mpmake's own failures, as mexec's.
const EXIT_FAILURE: i32 = 255;

fn main() {
    std::process::exit(real_main());
}

fn say(message: impl std::fmt::Display) {
    eprintln!("mpmake: {message}");
}

fn real_main() -> i32 {
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli.farm_flags()) {
        Ok(settings) => settings,
        Err(err) => {
            say(err);
            return EXIT_FAILURE;
        }
    };
    let started = Instant::now();
    let initial = capacity::measure(&settings);
    if cli.print_jobs {
        return match initial {
            Ok(capacity) => {
                println!("{}", capacity.slots.max(1));
                0
            }
            Err(err) => {
                say(err);
                EXIT_FAILURE
            }
        };
    }
    let initial = match initial {
        Ok(capacity) if capacity.slots > 0 => capacity,
        Ok(_) | Err(_) => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            let why = initial.err().unwrap_or_else(|| "no node is up".into());
            say(format!(
                "{why}; sizing make for this machine's {cpus} CPUs (jobs run locally)"
            ));
            Capacity {
                slots: cpus,
                nodes: Vec::new(),
            }
        }
    };

    let Some(mexec) = routing::find_mexec() else {
        say("cannot find the mexec binary (beside mpmake or on PATH)");
        return EXIT_FAILURE;
    };
    let build_id = format!(
        "{}:mpmake-{}",
        mexec_common::host::name(),
        std::process::id()
    );
    let routing = match routing::prepare(&mexec, &cli.make_args, &build_id) {
        Ok(routing) => routing,
        Err(err) => {
            say(format!("cannot prepare the compiler masquerade: {err}"));
            return EXIT_FAILURE;
        }
    };

    let explicit_jobs = args::has_jobs_flag(&cli.make_args);
    let mut pool = if explicit_jobs {
        None
    } else {
        match TokenPool::new(initial.slots.saturating_sub(1) as usize) {
            Ok(pool) => Some(pool),
            Err(err) => {
                say(format!("cannot create the jobserver: {err}"));
                return EXIT_FAILURE;
            }
        }
    };

    let mut make = Command::new(&cli.make);
    make.args(&routing.make_args)
        .envs(routing.env.iter().cloned());
    if let Some(nodes) = &cli.nodes {
        make.env("MEXEC_NODES", nodes);
    }
    if let Some(gatekeeper) = &cli.gatekeeper {
        make.env("MEXEC_GATEKEEPER", gatekeeper);
    }
    if let Some(token) = &cli.token_file {
        make.env("MEXEC_TOKEN_FILE", token);
    }
    for (var, path) in [
        ("MEXEC_TLS_CA", &cli.tls_ca),
        ("MEXEC_TLS_CERT", &cli.tls_cert),
        ("MEXEC_TLS_KEY", &cli.tls_key),
    ] {
        if let Some(path) = path {
            make.env(var, path);
        }
    }
    if let Some(pool) = &pool {
        pool.client().configure_make(&mut make);
    }
    let mut child = match make.spawn() {
        Ok(child) => child,
        Err(err) => {
            say(format!("cannot run {}: {err}", cli.make.to_string_lossy()));
            return EXIT_FAILURE;
        }
    };
    signals::forward_to(child.id());

    let live = !cli.quiet && std::io::stderr().is_terminal();
    let mut progress = Progress::new(routing.joblog.clone());
    let watch = capacity::Watch::start(settings, Duration::from_secs_f64(cli.poll_secs.max(0.1)));
    let mut timeline = vec![(0.0, initial.slots)];
    let mut current = initial;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(err) => break Err(err),
        }
        if let Some(latest) = watch.latest() {
            // No node up is no reason to stop make: keep one slot going.
            if latest.slots != current.slots {
                timeline.push((started.elapsed().as_secs_f64(), latest.slots));
            }
            current = latest;
        }
        if let Some(pool) = &mut pool {
            if let Err(err) = pool.set_target(current.slots.max(1) as usize - 1) {
                say(format!("jobserver: {err}"));
            }
        }
        if live {
            progress.update();
            progress.draw(Some(&current));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(watch);
    progress.clear();
    let code = match status {
        Ok(status) => exit_code(status),
        Err(err) => {
            say(format!("lost track of make: {err}"));
            EXIT_FAILURE
        }
    };

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
    code
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => EXIT_FAILURE,
    }
}
