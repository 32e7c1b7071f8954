//! `mexec`: run one command on the farm, as if it ran here.

// On Linux, `mexec` starts through a C `main` of its own: the standard
// library's start-up finds the main thread's stack by reading and parsing
// /proc/self/maps (glibc's pthread_getattr_np), a tenth of the client's
// CPU per job in a profile, for a guard-page message on stack overflow.
// What else that start-up does that mexec relies on is done here.
#![cfg_attr(all(target_os = "linux", not(test)), no_main)]

use mexec_client::invocation::{self, Invocation};
use mexec_client::job::Job;
use mexec_client::settings::Settings;
use mexec_client::{retry, say, status, usage, EXIT_MEXEC_FAILURE};

#[cfg(all(target_os = "linux", not(test)))]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    // As the standard start-up does: a write to a closed pipe is an EPIPE
    // error to handle, not a death by SIGPIPE. (Arguments come from
    // std::env, which glibc hands them to before main.)
    // SAFETY: sets the disposition of one signal, before any thread starts.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    // And a closed standard descriptor becomes /dev/null, so that no socket
    // of ours takes its number (and is passed on as the job's output).
    for fd in 0..3 {
        // SAFETY: only asks after the descriptor number; closes nothing.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let closed =
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF);
        if closed {
            // The lowest free number is this one; kept open for good.
            if let Ok(null) = std::fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = std::os::fd::IntoRawFd::into_raw_fd(null);
            }
        }
    }
    std::process::exit(real_main());
}

#[cfg(any(not(target_os = "linux"), test))]
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
