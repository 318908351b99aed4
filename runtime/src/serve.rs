//! `/metrics`, `/healthz` and `/readyz` on one address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What a binary exposes: its metrics, and whether it is ready.
pub trait Exposed: Send + Sync + 'static {
    /// The metrics in the OpenMetrics text format.
    fn encode(&self) -> String;
    fn is_ready(&self) -> bool;
    /// What `/readyz` says while not ready.
    fn not_ready(&self) -> &'static str;
}

/// A registry in the OpenMetrics text format (what [`Exposed::encode`] returns).
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// Serves the endpoints in the background until the process ends.
pub fn spawn(
    addr: SocketAddr,
    exposed: Arc<dyn Exposed>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(exposed);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
        axum::serve(listener, app).await?;
        Ok(())
    })
}

async fn metrics(State(e): State<Arc<dyn Exposed>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        e.encode(),
    )
}

async fn ready(State(e): State<Arc<dyn Exposed>>) -> impl IntoResponse {
    if e.is_ready() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", e.not_ready()),
        )
    }
}
