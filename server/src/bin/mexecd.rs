//! `mexecd`: the executor daemon. Parses settings, binds, and serves until
//! SIGTERM or SIGINT, then drains.

use anyhow::Context;
use clap::Parser;
use mexec_server::config::{Flags, Settings};
use tokio::net::TcpListener;

fn main() {
    // The same binary is the daemon's group keeper when started as one.
    mexec_server::executor::group_keeper::serve_if_keeper();
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
    mexec_common::telemetry::init_tracing(settings.log_format, "info");
    if settings.is_insecure() {
        tracing::warn!(
            listen = %settings.listen,
            "INSECURE: listening beyond loopback without authentication; anyone who can reach \
             this port can run commands on this node"
        );
    }
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let bound = listener.local_addr()?;
    // Scripts and tests started with port 0 read the real address here.
    println!("mexecd {} listening on {bound}", settings.name);
    tracing::info!(
        node = %settings.name,
        listen = %bound,
        slots = settings.slots,
        max_queued = settings.max_queued,
        run_as = settings.run_as.as_ref().map(|a| a.name.as_str()).unwrap_or("(self)"),
        auth = settings.auth_mode(),
        allowed_users = settings.allowed_users.as_ref().map(|u| u.join(",")).unwrap_or_else(|| "(all)".into()),
        allowed_programs = if settings.allowed_programs.is_empty() { "(all)".to_owned() } else { settings.allowed_programs.join(",") },
        limits = ?settings.limits,
        "executor started"
    );
    mexec_server::executor::run(listener, settings, mexec_server::shutdown::signal()).await?;
    Ok(())
}
