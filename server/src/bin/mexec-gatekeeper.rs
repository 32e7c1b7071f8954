//! `mexec-gatekeeper`: cluster membership, fair queueing, placement leases
//! and relayed jobs. Parses settings, binds, and serves until SIGTERM or
//! SIGINT.

use clap::Parser;
use mexec_server::gatekeeper::{self, Flags, Settings};

fn main() {
    if let Err(err) = real_main() {
        eprintln!("mexec-gatekeeper: {err:#}");
        std::process::exit(2);
    }
}

#[tokio::main]
async fn real_main() -> anyhow::Result<()> {
    let settings = Settings::resolve(Flags::parse())?;
    mexec_common::telemetry::init_tracing(settings.daemon.log_format, "info");
    let listener = settings.daemon.bind().await?;
    let bound = listener.local_addr()?;
    println!("mexec-gatekeeper listening on {bound}");
    tracing::info!(
        listen = %bound,
        max_queued = settings.limits.max_queued,
        tls = settings.daemon.tls.is_some(),
        token = settings.daemon.token.is_some(),
        "gatekeeper started"
    );
    gatekeeper::run(listener, settings, mexec_server::daemon::shutdown::signal()).await?;
    Ok(())
}
