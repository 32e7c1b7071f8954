//! `mexec-gatekeeper`: cluster membership, fair queueing, placement leases
//! and relayed jobs. Parses settings, binds, and serves until SIGTERM or
//! SIGINT.

use anyhow::Context;
use clap::Parser;
use mexec_server::gatekeeper::config::{Flags, Settings};
use tokio::net::TcpListener;

fn main() {
    if let Err(err) = real_main() {
        eprintln!("mexec-gatekeeper: {err:#}");
        std::process::exit(2);
    }
}

#[tokio::main]
async fn real_main() -> anyhow::Result<()> {
    let settings = Settings::resolve(Flags::parse())?;
    mexec_common::telemetry::init_tracing(settings.log_format, "info");
    if settings.is_insecure() {
        tracing::warn!(
            listen = %settings.listen,
            "INSECURE: listening beyond loopback without authentication; anyone who can reach \
             this port can submit jobs to the cluster"
        );
    }
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let bound = listener.local_addr()?;
    println!("mexec-gatekeeper listening on {bound}");
    tracing::info!(
        listen = %bound,
        max_queued = settings.limits.max_queued,
        tls = settings.tls.is_some(),
        token = settings.token.is_some(),
        "gatekeeper started"
    );
    mexec_server::gatekeeper::run(listener, settings, mexec_server::shutdown::signal()).await?;
    Ok(())
}
