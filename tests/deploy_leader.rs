//! Two operator replicas with `--leader-elect` (lease 6 s, renewed 2 s before
//! expiry): only the Lease holder writes; SIGKILL of the leader hands over
//! within the lease duration, SIGTERM within a second or two; a migration in
//! flight across either handover reaches Enforced exactly once.

mod deploy_support;

use std::time::{Duration, Instant};

use deploy_support::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use serde_json::json;

async fn holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(DEFAULT_LEASE)
        .await
        .expect("get the Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn start(id: &Identity, name: &str, watch_ns: &str, prometheus: &str) -> Operator {
    let mut opts = OperatorOptions::new(name, &id.kubeconfig, watch_ns);
    opts.lease = Some((&id.namespace, DEFAULT_LEASE));
    opts.prometheus_url = Some(prometheus);
    start_operator(opts).await
}

async fn start_migration(client: &Client, ns: &str, name: &str) {
    create_migration(
        client,
        ns,
        json!({
            "metadata": {"name": name},
            "spec": {
                "mode": "STRICT",
                "selector": {"matchLabels": {"app": name}},
                "analysis": {"interval": "2s", "window": "10s", "hold": "8s", "minRequestRate": 0.1},
            },
        }),
    )
    .await;
}

/// Time from now until `op` reports itself leader.
async fn time_to_lead(op: &Operator, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    op.wait_ready("leader", timeout).await.unwrap();
    t0.elapsed()
}

#[tokio::test]
async fn one_leader_writes_and_hands_over_on_sigkill_and_sigterm() {
    let sb = testkit::sandbox().await;
    let admin = sb.client().await;
    let lease_ns = testkit::TestNamespace::create(&admin, "deploy-leader").await;
    let id = Identity::provision(sb, &admin, lease_ns.name(), cluster_rules(), lease_rules()).await;
    let prefix = unique("dle-") + "-";
    let twin = start_twin(sb, "all-enrolled.yaml", &prefix).await;
    let ns = format!("{prefix}shop");
    let _cleanup = testkit::NamespaceGuard::new([ns.clone()]);
    let prom = sb.prometheus_url();

    let a_name = format!("{}-a", lease_ns.name());
    let b_name = format!("{}-b", lease_ns.name());
    let a = start(&id, &a_name, &ns, prom).await;
    a.wait_ready("leader", Duration::from_secs(20))
        .await
        .unwrap();
    let mut b = start(&id, &b_name, &ns, prom).await;
    // The standby's caches are synced too: it is ready, and says it stands by.
    b.wait_ready("standby", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        holder(&admin, lease_ns.name()).await.as_deref(),
        Some(a_name.as_str())
    );

    // "api" is in flight (holding) when the leader dies.
    start_migration(&admin, &ns, "api").await;
    wait_phase(&admin, &ns, "api", "Holding", Duration::from_secs(60)).await;
    let events = operator_events_after(&admin, &ns, "api", "Holding").await;
    assert_eq!(
        instances(&events).keys().collect::<Vec<_>>(),
        [&a_name],
        "{events:#?}"
    );
    assert!(a.metric("mtls_migrator_reconciles_total").await > 0.0);
    assert_eq!(
        b.metric("mtls_migrator_reconciles_total").await,
        0.0,
        "the standby reconciled"
    );
    assert_eq!(a.metric("mtls_migrator_leader").await, 1.0);
    assert_eq!(b.metric("mtls_migrator_leader").await, 0.0);

    a.signal("KILL");
    let sigkill = time_to_lead(&b, LEASE_DURATION * 2).await;
    assert!(
        sigkill <= LEASE_DURATION + Duration::from_millis(1500),
        "SIGKILL handover took {sigkill:?} (lease {LEASE_DURATION:?})"
    );
    assert_eq!(
        holder(&admin, lease_ns.name()).await.as_deref(),
        Some(b_name.as_str())
    );
    drop(a);
    wait_phase(&admin, &ns, "api", "Enforced", Duration::from_secs(60)).await;

    // A fresh replica joins as standby; "db" is in flight when B gets SIGTERM.
    let a2_name = format!("{}-a2", lease_ns.name());
    let a2 = start(&id, &a2_name, &ns, prom).await;
    a2.wait_ready("standby", Duration::from_secs(20))
        .await
        .unwrap();
    start_migration(&admin, &ns, "db").await;
    wait_phase(&admin, &ns, "db", "Holding", Duration::from_secs(60)).await;
    b.signal("TERM");
    let sigterm = time_to_lead(&a2, LEASE_DURATION * 2).await;
    assert!(
        sigterm <= Duration::from_secs(3),
        "SIGTERM handover took {sigterm:?}"
    );
    assert_eq!(
        b.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        b.log_tail(10)
    );
    wait_phase(&admin, &ns, "db", "Enforced", Duration::from_secs(60)).await;
    eprintln!("handover after SIGKILL: {sigkill:.2?}, after SIGTERM: {sigterm:.2?}");

    // Each migration went to STRICT once, whoever finished it.
    for name in ["api", "db"] {
        let events = operator_events_after(&admin, &ns, name, "Enforced").await;
        assert_eq!(occurrences(&events, "Enforced"), 1, "{name}: {events:#?}");
        assert_eq!(
            occurrences(&events, "HoldComplete"),
            1,
            "{name}: {events:#?}"
        );
    }
    let db_events = operator_events(&admin, &ns, "db").await;
    let writers = instances(&db_events);
    assert!(
        writers.keys().all(|w| *w == b_name || *w == a2_name),
        "{writers:?}"
    );
    for op in [&b, &a2] {
        assert_eq!(op.forbidden_lines(), Vec::<String>::new(), "{}", op.name);
    }

    a2.signal("TERM");
    twin.stop().await;
    id.cleanup(&admin).await;
    lease_ns.cleanup().await;
}
