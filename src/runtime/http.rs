//! The operator's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::telemetry::Metrics;

/// What the probes report. Shared between the controller, the lease task and
/// the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    /// True once the controller's watches have listed their objects.
    pub synced: AtomicBool,
    /// Whether leader election is on; without it every replica leads.
    pub leader_election: bool,
    /// True while this replica holds the lease.
    pub leader: AtomicBool,
}

impl Health {
    pub fn new(leader_election: bool) -> Self {
        Self {
            leader_election,
            ..Self::default()
        }
    }

    pub fn is_leader(&self) -> bool {
        !self.leader_election || self.leader.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
}

pub fn router(metrics: Metrics, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Ready once the watches are synced. A standby replica is ready too (it can
/// take over at once); the body says which role it has.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if !state.health.synced.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "watches not synced\n".to_string(),
        );
    }
    let role = match (state.health.leader_election, state.health.is_leader()) {
        (false, _) => "ready (leader election off)\n",
        (true, true) => "ready (leader)\n",
        (true, false) => "ready (standby: another replica holds the lease)\n",
    };
    (StatusCode::OK, role.to_string())
}

/// Serves until `shutdown` fires, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
