//! `/metrics`, `/healthz` and `/readyz` on one address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What the endpoints answer from.
pub struct Endpoints {
    /// The metrics in the OpenMetrics text format.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    pub ready: Arc<AtomicBool>,
    /// What `/readyz` says while not ready.
    pub not_ready: &'static str,
}

/// Serves the endpoints until the process ends.
pub async fn serve(addr: SocketAddr, endpoints: Endpoints) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Arc::new(endpoints));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn metrics(State(e): State<Arc<Endpoints>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (e.metrics)(),
    )
}

async fn ready(State(e): State<Arc<Endpoints>>) -> impl IntoResponse {
    if e.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", e.not_ready),
        )
    }
}
