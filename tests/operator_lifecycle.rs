//! Rollback by editing the spec, the end of a migration (`onDelete`), and
//! the operator's quietness when nothing changes.
//! Issue 4, "What proves it" (f) and (h), and behaviour 9 (no self-triggering).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use mtls_migrator::api::migration::Phase;
use serde_json::{Value, json};
use support::*;

const NAME: &str = "to-strict";
const MIGRATION_ANNOTATION: &str = "mtls.migrator.dev/migration";
const ORIGINAL_SPEC_ANNOTATION: &str = "mtls.migrator.dev/original-spec";
const MANAGED_BY_LABEL: &str = "mtls.migrator.dev/managed-by";

/// (f) `kubectl patch ... spec.mode PERMISSIVE` on an enforced migration puts
/// the PeerAuthentication back to PERMISSIVE without waiting for a
/// measurement, and `kubectl wait --for=condition=Ready` succeeds right
/// after. Then, with nothing measured and nothing changing, reconciles
/// triggered by unrelated pod edits write no status.
#[tokio::test]
async fn rollback_by_kubectl_patch_is_prompt_and_then_status_stays_put() {
    let s = Setup::start("op-f", &shipped_scenario("all-enrolled.yaml"), "shop").await;
    let api = s.migrations();
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "analysis": fast_analysis("2s", "6s")}),
    )
    .await;
    wait_migration(&api, NAME, Duration::from_secs(40), "Enforced", enforced).await;
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("STRICT"));

    let pas = peer_authentications(&s.client, &s.ns);
    // Watch the policy while kubectl runs: the operator may act before
    // kubectl has even printed its answer.
    let started = Instant::now();
    let patch = async {
        let out = kubectl(
            s.sb,
            &[
                "patch",
                "mtlsm",
                NAME,
                "-n",
                &s.ns,
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"mode":"PERMISSIVE"}}"#,
            ],
            None,
        )
        .await;
        (out, started.elapsed())
    };
    let permissive = testkit::poll_until(
        Duration::from_secs(10),
        Duration::from_millis(5),
        async || {
            let pa = pas.get(NAME).await.ok()?;
            (pa.data["spec"]["mtls"]["mode"] == "PERMISSIVE").then(|| started.elapsed())
        },
    );
    let (((ok, _, err), patched), latency) = tokio::join!(patch, permissive);
    assert!(ok, "kubectl patch: {err}");
    let latency =
        latency.expect("the PeerAuthentication should be PERMISSIVE soon after the patch");
    println!(
        "rollback latency: {} ms from starting `kubectl patch` to the PeerAuthentication read back \
         PERMISSIVE (kubectl itself returned after {} ms)",
        latency.as_millis(),
        patched.as_millis()
    );
    assert!(
        latency < Duration::from_secs(2),
        "rollback took {latency:?}"
    );

    let (ok, out, err) = kubectl(
        s.sb,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("mtlsm/{NAME}"),
            "-n",
            &s.ns,
            "--timeout=10s",
        ],
        None,
    )
    .await;
    assert!(
        ok,
        "kubectl wait failed right after the rollback: {out}{err}"
    );
    let m = api.get(NAME).await.expect("get migration");
    let text = status_text(Some(&m));
    assert_eq!(phase(&m), Some(Phase::RolledBack), "{text}");
    assert!(has_cond(&m, "Ready", "True", "RolledBack"), "{text}");
    assert!(
        has_cond(&m, "PermissiveApplied", "True", "PolicyPermissive"),
        "{text}"
    );
    assert!(
        has_cond(&m, "StrictEnforced", "False", "RolledBack"),
        "{text}"
    );
    let ready = condition(&m, "Ready").expect("Ready");
    assert_eq!(ready.observed_generation, m.metadata.generation, "{text}");
    assert_eq!(
        m.status.as_ref().and_then(|s| s.observed_generation),
        m.metadata.generation
    );

    // Nothing changes now: pod edits trigger reconciles, none writes status.
    let version = m.resource_version();
    let events_before = wait_event_count(&s.client, &s.ns, NAME, "RolledBack", 1).await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let pod = s.pod_names(&s.ns, "web").await.remove(0);
    let operator = &s.operator;
    for i in 0..5 {
        let before = operator.metric("mtls_migrator_reconciles_total").await;
        let poke = json!({"metadata": {"annotations": {"operator-e2e/poke": i.to_string()}}});
        pods.patch(&pod, &PatchParams::default(), &Patch::Merge(&poke))
            .await
            .expect("annotate pod");
        testkit::poll_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || {
                (operator.metric("mtls_migrator_reconciles_total").await > before).then_some(())
            },
        )
        .await
        .expect("a pod change should trigger a reconcile");
    }
    let m = api.get(NAME).await.expect("get migration");
    assert_eq!(
        m.resource_version(),
        version,
        "status was rewritten although nothing changed: {}",
        status_text(Some(&m))
    );
    assert_eq!(
        event_count(&s.client, &s.ns, NAME, "RolledBack").await,
        events_before
    );
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("PERMISSIVE"));
    s.assert_nothing_broken().await;
}

/// (h) `onDelete: Restore` on a policy the user wrote: the migration takes
/// it over, enforces STRICT, and on deletion puts the user's spec back and
/// removes every trace of itself.
#[tokio::test]
async fn on_delete_restore_puts_the_original_policy_back() {
    let s = Setup::start("op-h1", &shipped_scenario("all-enrolled.yaml"), "shop").await;
    let pas = peer_authentications(&s.client, &s.ns);
    let original_spec = json!({"mtls": {"mode": "UNSET"}});
    let user_pa = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {
            "name": "default",
            "namespace": s.ns,
            "labels": {"team": "payments", "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"example.com/owner": "payments-oncall"},
        },
        "spec": original_spec,
    });
    pas.patch(
        "default",
        &PatchParams::apply("platform-team"),
        &Patch::Apply(&user_pa),
    )
    .await
    .expect("create the user's PeerAuthentication");

    let api = s.migrations();
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "onDelete": "Restore", "analysis": fast_analysis("2s", "6s")}),
    )
    .await;
    let m = wait_migration(&api, NAME, Duration::from_secs(40), "Enforced", enforced).await;
    let policy = m
        .status
        .clone()
        .unwrap_or_default()
        .policy
        .expect("status.policy");
    assert_eq!(policy.name, "default", "took over the user's policy");
    assert!(!policy.created);
    assert_eq!(policy.original_spec.as_ref(), Some(&original_spec));
    let pa = pas.get("default").await.expect("get PA");
    assert_eq!(pa.data["spec"]["mtls"]["mode"], "STRICT");
    assert_eq!(
        pa.annotations().get(MIGRATION_ANNOTATION),
        Some(&format!("{}/{NAME}", s.ns))
    );
    assert!(s.pa_mode(NAME).await.is_none(), "no second policy created");

    api.delete(NAME, &DeleteParams::default())
        .await
        .expect("delete migration");
    wait_gone(&api).await;
    let pa = pas.get("default").await.expect("the policy stays");
    assert_eq!(pa.data["spec"], original_spec, "spec restored");
    assert_eq!(
        pa.labels().get("team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(pa.labels().get(MANAGED_BY_LABEL), None);
    assert_eq!(
        pa.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("Helm"),
        "the real owner's label survives the takeover and the restore"
    );
    assert_eq!(
        pa.annotations()
            .get("example.com/owner")
            .map(String::as_str),
        Some("payments-oncall")
    );
    let ours: Vec<&String> = pa
        .annotations()
        .keys()
        .filter(|k| k.starts_with("mtls.migrator.dev/"))
        .collect();
    assert!(ours.is_empty(), "annotations left behind: {ours:?}");
    assert_eq!(
        wait_event_count(&s.client, &s.ns, NAME, "PolicyRestored", 1).await,
        1
    );
}

/// (h) `onDelete: Keep` (the default): deleting the migration leaves STRICT
/// in force; the policy is simply no longer marked as managed.
#[tokio::test]
async fn on_delete_keep_leaves_strict_in_place() {
    let s = Setup::start("op-h2", &shipped_scenario("all-enrolled.yaml"), "shop").await;
    let api = s.migrations();
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "onDelete": "Keep", "analysis": fast_analysis("2s", "6s")}),
    )
    .await;
    let m = wait_migration(&api, NAME, Duration::from_secs(40), "Enforced", enforced).await;
    assert!(m.status.unwrap_or_default().policy.expect("policy").created);

    api.delete(NAME, &DeleteParams::default())
        .await
        .expect("delete migration");
    wait_gone(&api).await;
    let pa = peer_authentications(&s.client, &s.ns)
        .get(NAME)
        .await
        .expect("the policy stays");
    assert_eq!(pa.data["spec"]["mtls"]["mode"], "STRICT");
    assert_eq!(pa.annotations().get(MIGRATION_ANNOTATION), None);
    assert_eq!(pa.annotations().get(ORIGINAL_SPEC_ANNOTATION), None);
    assert_eq!(pa.labels().get(MANAGED_BY_LABEL), None);
    assert_eq!(
        wait_event_count(&s.client, &s.ns, NAME, "PolicyKept", 1).await,
        1
    );
    // STRICT stays in force for the twin's traffic too.
    let twin = &s.twin;
    let edge: Value = testkit::poll_until(Duration::from_secs(10), POLL, async || {
        let e = twin.edge("web-to-api").await;
        (e["server_mode"] == "STRICT").then_some(e)
    })
    .await
    .expect("the twin sees STRICT");
    assert_eq!(edge["outcome"], "mtls-accepted");
    s.assert_nothing_broken().await;
}

/// Waits until the migration is gone (its finalizer ran).
async fn wait_gone(api: &Api<mtls_migrator::api::migration::MtlsMigration>) {
    testkit::poll_until(Duration::from_secs(20), POLL, async || {
        api.get_opt(NAME).await.ok()?.is_none().then_some(())
    })
    .await
    .expect("the migration should be deleted once the operator cleaned up");
}
