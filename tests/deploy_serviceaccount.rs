//! The operator installed by `config/default`, authenticating as its own
//! ServiceAccount (a TokenRequest token, nothing else), migrates the mesh
//! twin's all-enrolled namespace to STRICT and, on deletion with
//! `onDelete: Restore`, puts the user's PeerAuthentication back.

mod deploy_support;

use std::time::Duration;

use deploy_support::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use mtls_migrator::api::migration::MtlsMigration;
use serde_json::json;

#[tokio::test]
async fn the_service_account_runs_a_migration_to_enforced_and_restores_on_delete() {
    let sb = testkit::sandbox().await;
    let admin = sb.client().await;
    apply_default_config(sb).await;
    let token = create_token(sb, OPERATOR_NAMESPACE, SERVICE_ACCOUNT);
    let kubeconfig = token_kubeconfig(sb, &token, &unique("deploy-sa-"));

    let prefix = unique("dsa-") + "-";
    let twin = start_twin(sb, "all-enrolled.yaml", &prefix).await;
    let ns = format!("{prefix}shop");
    let _cleanup = testkit::NamespaceGuard::new([ns.clone()]);
    // The user's own namespace policy, which the migration takes over.
    apply_peer_authentication(
        &admin,
        &ns,
        "default",
        json!({"mtls": {"mode": "PERMISSIVE"}}),
        "shop-owner",
    )
    .await;

    let identity = unique("deploy-sa-op-");
    let mut opts = OperatorOptions::new(&identity, &kubeconfig, &ns);
    // The Lease the installed Role names, in the operator's namespace.
    opts.lease = Some((OPERATOR_NAMESPACE, DEFAULT_LEASE));
    opts.prometheus_url = Some(sb.prometheus_url());
    let mut op = start_operator(opts).await;
    // A lease left by an earlier killed run expires within its duration.
    op.wait_ready("leader", LEASE_DURATION * 3).await.unwrap();

    create_migration(
        &admin,
        &ns,
        json!({
            "metadata": {"name": "shop"},
            "spec": {
                "mode": "STRICT",
                "analysis": {"interval": "2s", "window": "10s", "hold": "6s", "minRequestRate": 0.1},
                "onDelete": "Restore",
            },
        }),
    )
    .await;
    let enforced = wait_phase(&admin, &ns, "shop", "Enforced", Duration::from_secs(120)).await;
    let pa = peer_authentication(&admin, &ns, "default")
        .await
        .expect("default policy");
    assert_eq!(pa_mode(&pa), Some("STRICT"), "{pa}");
    assert_eq!(
        pa["metadata"]["annotations"]["mtls.migrator.dev/migration"],
        format!("{ns}/shop"),
        "{pa}"
    );
    let managers: Vec<&str> = pa["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|f| f["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(managers.contains(&REPORTER), "field managers {managers:?}");

    // All traffic was mTLS, so STRICT broke nothing.
    let truth = twin.truth().await;
    for edge in truth["edges"].as_array().expect("edges") {
        assert_eq!(edge["outcome"], "mtls-accepted", "{edge}");
        assert_eq!(edge["broken"].as_u64(), Some(0), "{edge}");
    }
    let events = operator_events_after(&admin, &ns, "shop", "Enforced").await;
    assert_eq!(occurrences(&events, "Enforced"), 1, "{events:#?}");
    assert_eq!(
        instances(&events).keys().collect::<Vec<_>>(),
        [&identity],
        "{events:#?}"
    );
    assert!(
        enforced
            .metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "mtls.migrator.dev/cleanup")
    );

    let migrations: Api<MtlsMigration> = Api::namespaced(admin.clone(), &ns);
    migrations
        .delete("shop", &DeleteParams::default())
        .await
        .expect("delete the migration");
    testkit::poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            migrations
                .get_opt("shop")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await
    .expect("the finalizer is removed after cleanup");
    let restored = peer_authentication(&admin, &ns, "default")
        .await
        .expect("default policy kept");
    assert_eq!(pa_mode(&restored), Some("PERMISSIVE"), "{restored}");
    let annotations = restored["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        !annotations
            .keys()
            .any(|k| k.starts_with("mtls.migrator.dev/")),
        "{restored}"
    );
    assert!(
        occurrences(
            &operator_events(&admin, &ns, "shop").await,
            "PolicyRestored"
        ) == 1
    );

    assert_eq!(
        op.forbidden_lines(),
        Vec::<String>::new(),
        "the installed RBAC refused something"
    );
    // SIGTERM releases the Lease for the next replica.
    op.signal("TERM");
    assert_eq!(
        op.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        op.log_tail(10)
    );
    let lease = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .get(DEFAULT_LEASE)
        .await
        .expect("the Lease");
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder, None, "the lease was not released");

    twin.stop().await;
}
