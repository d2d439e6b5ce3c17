//! mesh-twin: a simulated Istio mTLS data plane over a real API server.
//!
//! It materializes a scenario's namespaces, Services and Deployment-shaped
//! pods, watches PeerAuthentication, DestinationRule and Pod objects, decides
//! for every traffic edge what Istio would do, and exports what Prometheus
//! would scrape from the proxies next to the ground truth.

pub mod app;
pub mod istio_config;
pub mod istio_model;
pub mod materialize;
pub mod metrics;
pub mod pod_view;
pub mod scenario;
pub mod telemetry;
pub mod traffic;
