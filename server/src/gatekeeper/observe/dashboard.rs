//! The gatekeeper's HTTP routes: the dashboard page and its assets
//! (embedded in the binary: no network beyond the gatekeeper), the live
//! picture as server-sent events, the same as JSON, and `/metrics`.
//! Every route is a GET: nothing here can change the farm.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures_util::stream::Stream;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::WatchStream;

use crate::daemon::Here;
use crate::gatekeeper::shared::Shared;
use crate::web::{self, WebAccess};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// Serves the dashboard and `/metrics` on `listener` until the task is
/// aborted.
pub async fn serve_http(shared: Arc<Shared>, listener: TcpListener, access: WebAccess) {
    let here = here(&shared);
    let router = Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/events", get(events))
        .route("/snapshot.json", get(snapshot))
        .merge(metrics_routes())
        .with_state(shared);
    serve((listener, here), access, router).await;
}

/// Serves `/metrics` alone on `listener` until the task is aborted.
pub async fn serve_metrics(shared: Arc<Shared>, listener: TcpListener, access: WebAccess) {
    let here = here(&shared);
    serve(
        (listener, here),
        access,
        metrics_routes().with_state(shared),
    )
    .await;
}

/// The gatekeeper, as its HTTP listeners' refusals name it.
fn here(shared: &Shared) -> Here {
    Here {
        node: shared.access.node().into(),
        role: "gatekeeper",
    }
}

async fn serve((listener, here): (TcpListener, Here), access: WebAccess, router: Router) {
    let served = web::serve((listener, here), access, router, std::future::pending());
    if let Err(err) = served.await {
        tracing::error!(%err, "HTTP listener stopped");
    }
}

fn metrics_routes() -> Router<Arc<Shared>> {
    Router::new().route("/metrics", get(metrics))
}

fn page(text: &'static str, content_type: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type)], text)
}

async fn metrics(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> impl IntoResponse {
    let (nodes, users, _) = shared.with(|c| c.status());
    let text = shared.observe.metrics.encode(&nodes, &users);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

async fn snapshot(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> impl IntoResponse {
    let text = shared.observe.snapshot.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        (*text).clone(),
    )
}

/// The picture at once, then every time it is made again.
async fn events(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let pictures = WatchStream::new(shared.observe.snapshot.subscribe())
        .map(|text| Ok(Event::default().event("snapshot").data(text.as_str())));
    Sse::new(pictures).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
