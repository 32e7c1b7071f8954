//! `mexec-gatekeeper`: cluster membership, fair queueing, placement leases
//! and relayed jobs. Parses settings, binds, and serves until SIGTERM or
//! SIGINT.

use clap::Parser;
use mexec_server::gatekeeper::observe::accounting::Accounting;
use mexec_server::gatekeeper::{self, Flags, Observed, Settings};
use mexec_server::web::WebListen;

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
    // Before listening: a database that cannot be used stops the start.
    let accounting = Accounting::open(settings.accounting_db.as_deref())?;
    if settings.accounting_db.is_none() {
        tracing::info!(
            "accounting kept in memory (lost at a restart): give --accounting-db FILE to keep it"
        );
    }
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
    let observed = Observed {
        metrics: bind("metrics", settings.metrics.as_ref()).await?,
        http: bind("dashboard", settings.http.as_ref()).await?,
        accounting,
    };
    let stop = mexec_server::daemon::shutdown::signal();
    gatekeeper::run_observed(listener, observed, settings, stop).await?;
    Ok(())
}

/// Binds an HTTP listener; scripts and tests started with port 0 read its
/// address on stdout.
async fn bind(
    what: &str,
    web: Option<&WebListen>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(web) = web else { return Ok(None) };
    let listener = web.bind().await?;
    let at = listener.local_addr()?;
    println!("mexec-gatekeeper {what} on {}://{at}/", web.access.scheme());
    Ok(Some(listener))
}
