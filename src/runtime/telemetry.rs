//! The operator's own metrics, exposed on `/metrics` in the Prometheus text
//! format through `prometheus-client` (the maintained exposition crate).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// A stable, low-cardinality name of the error's kind.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub outcome: QueryOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum QueryOutcome {
    success,
    failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Every metric the operator exports. Cheap to clone: the handles share state.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub prometheus_queries: Family<QueryLabels, Counter>,
    pub prometheus_query_duration: Histogram,
    pub migrations: Family<PhaseLabels, Gauge>,
    pub leader: Gauge,
    /// Phase of each migration we last saw, to keep the per-phase gauge exact.
    phases: Arc<Mutex<std::collections::HashMap<String, String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mtls_migrator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            reconcile_duration.clone(),
        );
        let prometheus_queries = Family::<QueryLabels, Counter>::default();
        registry.register(
            "prometheus_queries",
            "Evidence queries sent to Prometheus, by outcome",
            prometheus_queries.clone(),
        );
        let prometheus_query_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "prometheus_query_duration_seconds",
            "Time one evidence measurement (all its queries) took",
            prometheus_query_duration.clone(),
        );
        let migrations = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "migrations",
            "MtlsMigrations known to this replica, by phase",
            migrations.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease (or runs without election)",
            leader.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            reconcile_errors,
            reconcile_duration,
            prometheus_queries,
            prometheus_query_duration,
            migrations,
            leader,
            phases: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }

    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn observe_error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn observe_query(&self, took: Duration, ok: bool) {
        let outcome = if ok {
            QueryOutcome::success
        } else {
            QueryOutcome::failure
        };
        self.prometheus_queries
            .get_or_create(&QueryLabels { outcome })
            .inc();
        self.prometheus_query_duration.observe(took.as_secs_f64());
    }

    /// Records the phase of migration `key` (`namespace/name`); `None` when
    /// it was deleted.
    pub fn set_phase(&self, key: &str, phase: Option<&str>) {
        let mut phases = self.phases.lock().expect("phase map lock");
        let old = match phase {
            Some(p) => phases.insert(key.to_string(), p.to_string()),
            None => phases.remove(key),
        };
        if old.as_deref() == phase {
            return;
        }
        if let Some(old) = old {
            self.migrations
                .get_or_create(&PhaseLabels { phase: old })
                .dec();
        }
        if let Some(new) = phase {
            self.migrations
                .get_or_create(&PhaseLabels {
                    phase: new.to_string(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_gauge_moves_a_migration_between_phases() {
        let m = Metrics::default();
        m.set_phase("ns/a", Some("Observing"));
        m.set_phase("ns/b", Some("Observing"));
        m.set_phase("ns/a", Some("Enforced"));
        m.set_phase("ns/a", Some("Enforced"));
        let text = m.encode();
        assert!(
            text.contains("mtls_migrator_migrations{phase=\"Observing\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mtls_migrator_migrations{phase=\"Enforced\"} 1"),
            "{text}"
        );
        m.set_phase("ns/b", None);
        assert!(
            m.encode()
                .contains("mtls_migrator_migrations{phase=\"Observing\"} 0")
        );
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let m = Metrics::default();
        m.observe_error("kube");
        m.observe_error("kube");
        m.observe_query(Duration::from_millis(3), false);
        let text = m.encode();
        assert!(
            text.contains("mtls_migrator_reconcile_errors_total{kind=\"kube\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mtls_migrator_prometheus_queries_total{outcome=\"failure\"} 1"),
            "{text}"
        );
    }
}
