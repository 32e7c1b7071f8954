//! `mexecd`: the executor daemon. Parses settings, binds, and serves until
//! SIGTERM or SIGINT, then drains.

use clap::Parser;
use mexec_server::executor::{self, Flags, Settings, Watchers};

fn main() {
    // The same binary is the daemon's group keeper when started as one.
    executor::group_keeper::serve_if_keeper();
    if let Err(err) = real_main() {
        eprintln!("mexecd: {err:#}");
        std::process::exit(2);
    }
}

// One runtime thread: relaying jobs is light work, and on a build node the
// daemon's CPU is taken from the compiles (measured: a fifth less CPU per
// job than the two-thread runtime, and half the context switches).
#[tokio::main(flavor = "current_thread")]
async fn real_main() -> anyhow::Result<()> {
    let settings = Settings::resolve(Flags::parse())?;
    mexec_common::telemetry::init_tracing(settings.daemon.log_format, "info");
    let listener = settings.daemon.bind().await?;
    let bound = listener.local_addr()?;
    // Scripts and tests started with port 0 read the real address here.
    println!("mexecd {} listening on {bound}", settings.name);
    let metrics = match &settings.metrics {
        Some(web) => {
            let metrics = web.bind().await?;
            let at = metrics.local_addr()?;
            println!(
                "mexecd {} metrics on {}://{at}/metrics",
                settings.name,
                web.access.scheme()
            );
            Some(metrics)
        }
        None => None,
    };
    let users = settings.daemon.allowed_users.as_ref();
    let programs = &settings.allowed_programs;
    tracing::info!(
        node = %settings.name,
        listen = %bound,
        slots = settings.slots,
        max_queued = settings.max_queued,
        run_as = %settings.run_as.describe(),
        auth = settings.daemon.auth_mode(),
        allowed_users = users.map(|u| u.join(",")).unwrap_or_else(|| "(all)".into()),
        allowed_programs = if programs.is_empty() { "(all)".to_owned() } else { programs.join(",") },
        limits = %executor::describe_limits(&settings.limits),
        "executor started"
    );
    // This executable is the group keeper too (see `main`).
    let watchers = Watchers::start(&std::env::current_exe()?);
    executor::run_with_metrics(
        listener,
        metrics,
        settings,
        watchers,
        mexec_server::daemon::shutdown::signal(),
    )
    .await?;
    Ok(())
}
