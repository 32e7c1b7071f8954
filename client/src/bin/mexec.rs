//! `mexec`: run one command on the farm, as if it ran here.

use std::ffi::OsString;

use mexec_client::invocation::{self, Form};
use mexec_client::job::Job;
use mexec_client::settings::Settings;
use mexec_client::{driver, masquerade, os, say, status, EXIT_MEXEC_FAILURE};

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let invocation = match invocation::parse(std::env::args_os().collect()) {
        Ok(invocation) => invocation,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                EXIT_MEXEC_FAILURE
            } else {
                0
            };
        }
    };
    let settings = match Settings::resolve(&invocation.flags) {
        Ok(settings) => settings,
        Err(err) => {
            say!("{err}");
            return EXIT_MEXEC_FAILURE;
        }
    };
    if invocation.flags.status {
        return show_status(&settings, invocation.flags.json);
    }
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let argv: Vec<OsString> = match &invocation.form {
        Form::Options | Form::Command => invocation.args.clone(),
        Form::Compiler => settings
            .cc
            .iter()
            .cloned()
            .chain(invocation.args.clone())
            .collect(),
        Form::Masquerade(name) => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let self_exe = std::env::current_exe().unwrap_or_default();
            match masquerade::resolve(name, &path, &self_exe) {
                Ok(resolved) => {
                    // The job must find the real program, not our symlink.
                    env.retain(|(k, _)| k != "PATH");
                    env.push(("PATH".into(), resolved.path));
                }
                Err(err) => {
                    say!("{err}");
                    return 127;
                }
            }
            std::iter::once(name.clone())
                .chain(invocation.args.clone())
                .collect()
        }
    };
    if argv.is_empty() {
        say!("no command given; usage: mexec [OPTIONS] [--] COMMAND [ARGS...] (see mexec --help)");
        return EXIT_MEXEC_FAILURE;
    }
    let mut job = match Job::here(argv, env, &settings) {
        Ok(job) => job,
        Err(err) => {
            say!("{err}");
            return EXIT_MEXEC_FAILURE;
        }
    };
    job.timeout = settings.timeout;
    job.forward_stdin =
        settings.forward_stdin && !os::stdin_is_terminal() && reads_stdin(&job.argv);
    // A job that got any of our stdin is not repeated (stdin cannot be
    // replayed); the driver checks that when a node is lost.
    job.repeatable = settings.retry || invocation::is_repeatable_compile(&job.argv);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            say!("cannot start: {err}");
            return EXIT_MEXEC_FAILURE;
        }
    };
    let code = runtime.block_on(driver::run(&settings, &job));
    // A stdin read may still be blocked on a terminal or an idle pipe; it
    // cannot be cancelled, so do not wait for it.
    runtime.shutdown_background();
    code
}

/// A compiler reads stdin only when an input file is `-`; forwarding it
/// anyway would take input meant for the next command of a script.
fn reads_stdin(argv: &[OsString]) -> bool {
    let program = invocation::program_name(&argv[0]);
    if !invocation::is_compiler_name(&program) {
        return true;
    }
    argv[1..]
        .iter()
        .enumerate()
        .any(|(i, a)| a == "-" && (i == 0 || argv[i] != "-o"))
}

fn show_status(settings: &Settings, json: bool) -> i32 {
    if let Some(gatekeeper) = &settings.gatekeeper {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let reply = runtime.block_on(mexec_client::gatekeeper::cluster_status(
            gatekeeper,
            settings.token.as_ref(),
        ));
        runtime.shutdown_background();
        return match reply {
            Ok(reply) if json => {
                println!("{:#}", status::cluster_json(&reply));
                0
            }
            Ok(reply) => {
                print!("{}", status::cluster_table(&reply));
                0
            }
            Err(err) => {
                say!("gatekeeper {} unreachable: {err}", gatekeeper.authority());
                1
            }
        };
    }
    if settings.nodes.is_empty() {
        say!("no nodes are configured (set MEXEC_NODES or --nodes)");
        return EXIT_MEXEC_FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows = runtime.block_on(status::collect(&settings.nodes, settings.token.as_ref()));
    runtime.shutdown_background();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialize")
        );
    } else {
        print!("{}", status::table(&rows));
    }
    if rows.iter().any(|r| r.reachable) {
        0
    } else {
        1
    }
}
