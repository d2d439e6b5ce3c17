//! `/metrics` as Prometheus sees it: the sandbox's Prometheus scrapes the
//! operator (registered through file_sd, as a pod annotation or
//! ServiceMonitor would in a cluster) and answers PromQL on its series.

mod deploy_support;

use std::time::Duration;

use deploy_support::*;
use serde_json::json;

#[tokio::test]
async fn prometheus_scrapes_the_operators_own_series() {
    let sb = testkit::sandbox().await;
    let admin = sb.client().await;
    let ns = testkit::TestNamespace::create(&admin, "deploy-metrics").await;
    let id = Identity::provision(sb, &admin, ns.name(), cluster_rules(), lease_rules()).await;
    let name = format!("{}-op", ns.name());
    let op = start_operator(OperatorOptions::new(&name, &id.kubeconfig, ns.name())).await;
    op.wait_ready("leader election off", Duration::from_secs(20))
        .await
        .unwrap();

    let health = reqwest::get(format!("http://{}/healthz", op.addr))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200);
    let resp = reqwest::get(format!("http://{}/metrics", op.addr))
        .await
        .expect("GET /metrics");
    let content_type = resp.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.expect("metrics body");
    for series in [
        "mtls_migrator_reconciles_total",
        "mtls_migrator_reconcile_duration_seconds_bucket",
        "mtls_migrator_prometheus_query_duration_seconds_bucket",
        "mtls_migrator_leader",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }

    let job = unique("mtls-migrator-");
    let addr = op.addr.parse().expect("operator address");
    let _target = sb.register_scrape_target(&job, addr);
    create_migration(
        &admin,
        ns.name(),
        json!({"metadata": {"name": "metrics"}, "spec": {"mode": "PERMISSIVE"}}),
    )
    .await;
    wait_phase(
        &admin,
        ns.name(),
        "metrics",
        "Permissive",
        Duration::from_secs(20),
    )
    .await;

    let reconciles = sb
        .wait_for_prometheus(
            &format!("mtls_migrator_reconciles_total{{job=\"{job}\"}}"),
            |s| s.first().is_some_and(|x| x.value > 0.0),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(reconciles[0].labels["instance"], op.addr);
    sb.wait_for_prometheus(
        &format!("mtls_migrator_migrations{{job=\"{job}\",phase=\"Permissive\"}}"),
        |s| s.first().is_some_and(|x| x.value == 1.0),
        Duration::from_secs(30),
    )
    .await;

    drop(op);
    id.cleanup(&admin).await;
    ns.cleanup().await;
}
