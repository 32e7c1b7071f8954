//! `mexec`: run one command on the farm, as if it ran here.

use mexec_client::invocation::{self, Invocation};
use mexec_client::job::Job;
use mexec_client::settings::Settings;
use mexec_client::{retry, say, status, usage, EXIT_MEXEC_FAILURE};

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    #[cfg(unix)]
    if std::env::var_os(mexec_client::agent::SERVE_VARIABLE).is_some() {
        return mexec_client::agent::serve::main();
    }
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
    let connector = settings.farm.connector();
    let flags = &invocation.flags;
    if flags.status && flags.watch {
        return status::watch(&settings.farm, &connector);
    }
    if flags.status {
        return status::show(&settings.farm, &connector, flags.json);
    }
    if flags.usage {
        return usage::show(&settings.farm, &connector, flags.json);
    }
    run(&invocation, &settings, &connector)
}

/// Makes the job (before any thread starts: it reads the umask) and runs it.
fn run(
    invocation: &Invocation,
    settings: &Settings,
    connector: &mexec_common::connector::Connector,
) -> i32 {
    let job = match Job::new(invocation, settings) {
        Ok(job) => job,
        Err(err) => {
            say!("{err}");
            return err.exit_code();
        }
    };
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
    let code = runtime.block_on(async {
        #[cfg(unix)]
        {
            use mexec_client::{agent::handoff, job_hooks as hooks};
            match handoff::run(&invocation.flags.farm(), settings, &job).await {
                handoff::Handoff::Done(code) => return code,
                handoff::Handoff::Direct(reason) => {
                    if settings.verbose {
                        say!("running directly: {reason}");
                    }
                    hooks::set_direct_reason(reason);
                }
            }
        }
        retry::run(settings, connector, &job).await
    });
    // A stdin read may still be blocked on a terminal or an idle pipe; it
    // cannot be cancelled, so do not wait for it.
    runtime.shutdown_background();
    // make stats the job's outputs as soon as we exit: on a network file
    // system, reading the directory renews this host's cached entries and
    // times of the files the node just wrote (a stale time would make
    // make skip what depends on them). On a local disk there is nothing
    // to renew.
    if shared_tree(&job.cwd) {
        if let Ok(entries) = std::fs::read_dir(&job.cwd) {
            entries.for_each(drop);
        }
    }
    code
}

/// Whether `cwd` may be on a network file system (always, where that
/// cannot be told).
fn shared_tree(cwd: &std::path::Path) -> bool {
    #[cfg(unix)]
    return mexec_common::network_fs::may_be_network(cwd);
    #[cfg(not(unix))]
    {
        let _ = cwd;
        true
    }
}
