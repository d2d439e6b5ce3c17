//! The `/metrics` exposition: Istio's standard metrics as the proxies would
//! export them, and the twin's ground truth under its own names.
//!
//! prometheus-client fits: each metric has one fixed label set (a derived
//! struct), and counters are integers that the tick loop raises to the
//! floor of the fractional counts it carries.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::scenario::Client;
use crate::telemetry::{RequestLabels, Series, TcpLabels};
use crate::traffic::Traffic;

/// Content type of the OpenMetrics text prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TruthLabels {
    pub edge: String,
    pub source_workload: String,
    pub source_namespace: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_port: String,
}

pub struct Exporter {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    attempted: Family<TruthLabels, Counter>,
    served: Family<TruthLabels, Counter>,
    broken: Family<TruthLabels, Counter>,
}

impl Default for Exporter {
    fn default() -> Self {
        Self::new()
    }
}

/// Raises `c` to `floor(total)`; never lowers it.
fn raise(c: &Counter, total: f64) {
    let target = total.max(0.0).floor() as u64;
    let now = c.get();
    if target > now {
        c.inc_by(target - now);
    }
}

impl Exporter {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let attempted = Family::<TruthLabels, Counter>::default();
        let served = Family::<TruthLabels, Counter>::default();
        let broken = Family::<TruthLabels, Counter>::default();
        // Names without `_total`: the encoder appends it to counters.
        registry.register(
            "istio_requests",
            "Requests, as Istio proxies count them (simulated)",
            requests.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened, as Istio proxies count them (simulated)",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed, as Istio proxies count them (simulated)",
            tcp_closed.clone(),
        );
        registry.register(
            "mesh_twin_requests_attempted",
            "Ground truth: requests (TCP: connections) clients attempted per edge",
            attempted.clone(),
        );
        registry.register(
            "mesh_twin_requests_served",
            "Ground truth: requests (TCP: connections) served per edge",
            served.clone(),
        );
        registry.register(
            "mesh_twin_requests_broken",
            "Ground truth: requests (TCP: connections) that failed per edge",
            broken.clone(),
        );
        Exporter {
            registry,
            requests,
            tcp_opened,
            tcp_closed,
            attempted,
            served,
            broken,
        }
    }

    /// Brings the counters up to the traffic's totals.
    pub fn sync(&self, traffic: &Traffic) {
        for (key, total) in &traffic.series {
            match key {
                Series::Requests(l) => raise(&self.requests.get_or_create(l), *total),
                Series::TcpOpened(l) => raise(&self.tcp_opened.get_or_create(l), *total),
                Series::TcpClosed(l) => raise(&self.tcp_closed.get_or_create(l), *total),
            }
        }
        for rt in traffic.edges.values() {
            let e = &rt.edge;
            let (source_workload, source_namespace) = match &e.client {
                Client::Workload { name, namespace } => (name.clone(), namespace.clone()),
                Client::External { name } => (name.clone(), "external".to_string()),
            };
            let labels = TruthLabels {
                edge: e.id.clone(),
                source_workload,
                source_namespace,
                destination_workload: e.server_workload.clone(),
                destination_namespace: e.server_namespace.clone(),
                destination_port: e.port.to_string(),
            };
            raise(&self.attempted.get_or_create(&labels), rt.truth.attempted);
            raise(&self.served.get_or_create(&labels), rt.truth.served);
            raise(&self.broken.get_or_create(&labels), rt.truth.broken);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio_model::{Dataplane, Labels, MeshConfig};
    use crate::pod_view::PodView;
    use crate::scenario::Edge;
    use crate::telemetry::Protocol;
    use crate::traffic::World;
    use std::time::Duration;

    #[test]
    fn exposes_istio_names_and_labels_with_integer_counts() {
        let world = World {
            mesh: MeshConfig {
                root_namespace: "istio-system".into(),
                ..Default::default()
            },
            pods: vec![PodView {
                namespace: "shop".into(),
                name: "api-1".into(),
                workload: "api".into(),
                labels: Labels::new(),
                dataplane: Dataplane::Sidecar,
                tls_mode_istio: true,
                service_account: "api".into(),
                serving: true,
            }],
        };
        let mut t = Traffic::default();
        t.set_edges(vec![Edge {
            id: "x-to-api".into(),
            client: Client::External { name: "x".into() },
            server_workload: "api".into(),
            server_namespace: "shop".into(),
            service: "api".into(),
            port: 8080,
            protocol: Protocol::Http,
            rate: 3.0,
        }]);
        let ex = Exporter::new();
        t.step(&world, Duration::from_millis(500));
        ex.sync(&t);
        let text = ex.encode();
        assert!(
            text.contains(
                "istio_requests_total{reporter=\"destination\",source_workload=\"unknown\""
            ),
            "{text}"
        );
        assert!(
            text.contains("connection_security_policy=\"none\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mesh_twin_requests_attempted_total{edge=\"x-to-api\""),
            "{text}"
        );
        t.step(&world, Duration::from_millis(500));
        ex.sync(&t);
        assert!(
            ex.encode()
                .contains("connection_security_policy=\"none\"} 3")
        );
    }
}
