//! How long the pure work of one reconcile takes as the cluster grows:
//! selecting the scope's pods, summarizing enrollment, finding the scope's
//! hosts, checking every DestinationRule, resolving the PeerAuthentication,
//! and deciding. Prints one line per cluster size; run with
//! `cargo bench --bench reconcile_scale`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::DynamicObject;
use mtls_migrator::api::{MtlsMigration, MtlsMigrationSpec, MtlsMode};
use mtls_migrator::migration::{Observed, decide};
use mtls_migrator::observe::{PolicyObservation, Reading};
use mtls_migrator::scope::{self, DEFAULT_CLUSTER_DOMAIN, Scope};
use serde_json::json;

const NAMESPACES: usize = 50;

fn pod(ns: usize, i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "namespace": format!("ns-{ns}"), "name": format!("app-{}-abc12-{i}", i % 20),
            "labels": {"app": format!("app-{}", i % 20), "pod-template-hash": "abc12",
                       "security.istio.io/tlsMode": "istio"},
            "annotations": {"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("app-{}-abc12", i % 20), "uid": "u", "controller": true}]
        },
        "spec": {"containers": [{"name": "app", "image": "app"}, {"name": "istio-proxy", "image": "proxyv2"}]},
        "status": {"phase": "Running"}
    }))
    .expect("pod")
}

fn service(ns: usize, i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": format!("ns-{ns}"), "name": format!("app-{i}")},
        "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"port": 8080}]}
    }))
    .expect("service")
}

fn destination_rule(ns: usize, i: usize) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"namespace": format!("ns-{ns}"), "name": format!("dr-{i}")},
        "spec": {"host": format!("app-{}.ns-{}.svc.cluster.local", i % 20, (ns + 1) % NAMESPACES),
                 "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}
    }))
    .expect("destination rule")
}

fn migration() -> MtlsMigration {
    let mut m: MtlsMigration = MtlsMigration::new(
        "bench",
        MtlsMigrationSpec {
            mode: MtlsMode::STRICT,
            selector: None,
            port_level_mtls: Default::default(),
            analysis: Default::default(),
            sidecars: Default::default(),
            on_delete: Default::default(),
        },
    );
    m.metadata.namespace = Some("ns-0".into());
    m.metadata.generation = Some(1);
    m
}

fn main() {
    println!("one namespace-scoped reconcile's pure work (median of 21 runs)");
    println!(
        "{:>8} {:>9} {:>6} {:>12} {:>12}",
        "pods", "services", "DRs", "analysis", "decide"
    );
    for pods_per_ns in [10usize, 100, 400] {
        let pods: Vec<Pod> = (0..NAMESPACES)
            .flat_map(|ns| (0..pods_per_ns).map(move |i| pod(ns, i)))
            .collect();
        let services: Vec<Service> = (0..NAMESPACES)
            .flat_map(|ns| (0..20).map(move |i| service(ns, i)))
            .collect();
        let rules: Vec<DynamicObject> = (0..NAMESPACES)
            .flat_map(|ns| (0..10).map(move |i| destination_rule(ns, i)))
            .collect();
        let mig = migration();
        let scope = Scope::new("ns-0", None, "istio-system");
        let reading = Reading::Traffic {
            total_rate: 100.0,
            plaintext_rate: 0.0,
            top_sources: vec![],
            source_failure_rate: 0.0,
        };
        let mut analysis = Vec::new();
        let mut deciding = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            let in_scope: Vec<Pod> = pods
                .iter()
                .filter(|p| scope.covers_namespace(p.metadata.namespace.as_deref().unwrap_or("")))
                .cloned()
                .collect();
            let enrollment = scope::summarize(in_scope.iter(), &scope);
            let local: Vec<Service> = services
                .iter()
                .filter(|s| scope.covers_namespace(s.metadata.namespace.as_deref().unwrap_or("")))
                .cloned()
                .collect();
            let hosts = scope::scope_hosts(&local, &in_scope, &scope);
            let conflicts = scope::conflicts(&rules, &hosts, DEFAULT_CLUSTER_DOMAIN);
            let policy = scope::resolve_policy(&[], &scope);
            analysis.push(t.elapsed());

            let t = Instant::now();
            let d = decide(
                &mig,
                "istio-system",
                &Observed {
                    policy: &policy,
                    enrollment: &enrollment,
                    conflicts: &conflicts,
                    reading: Some(&reading),
                },
                Timestamp::now(),
            );
            deciding.push(t.elapsed());
            black_box((d, matches!(policy, PolicyObservation::Absent)));
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        println!(
            "{:>8} {:>9} {:>6} {:>12?} {:>12?}",
            pods.len(),
            services.len(),
            rules.len(),
            median(&mut analysis),
            median(&mut deciding)
        );
    }
}
