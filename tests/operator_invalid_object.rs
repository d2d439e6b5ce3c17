//! A stored MtlsMigration the operator cannot read (written under a looser
//! schema, as after a CRD downgrade) is reported on the object as a Warning
//! event, and the other migrations keep being driven: one bad object never
//! wedges the watch.

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use mtls_migrator::api::MtlsMigration;
use serde_json::json;
use testkit::{TestNamespace, poll_until};

const CRD: &str = "mtlsmigrations.mtls.migrator.dev";

/// Puts the generated CRD back however the test ends.
struct RestoreCrd;

impl Drop for RestoreCrd {
    fn drop(&mut self) {
        let root = testkit::repo_root();
        let sb_env = root.join("target/sandbox/env");
        let status = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {} && \"$KUBECTL\" apply --server-side --force-conflicts -f {}",
                sb_env.display(),
                root.join("crds/mtlsmigration.yaml").display()
            ))
            .stdout(Stdio::null())
            .status()
            .expect("run kubectl");
        assert!(status.success(), "restoring the CRD failed");
    }
}

#[tokio::test]
async fn an_unreadable_migration_is_reported_and_does_not_wedge_the_others() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "unreadable").await;
    let name = ns.name().to_string();
    let gvk = GroupVersionKind::gvk("mtls.migrator.dev", "v1alpha1", "MtlsMigration");
    let raw: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &name, &ApiResource::from_gvk(&gvk));

    // Loosen the stored schema so the API server keeps a spec our types refuse.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let restore = RestoreCrd;
    let mut crd = crds.get(CRD).await.expect("our CRD is installed");
    let schema = crd.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .expect("schema");
    schema.properties.as_mut().expect("properties").insert(
        "spec".into(),
        JSONSchemaProps {
            type_: Some("object".into()),
            x_kubernetes_preserve_unknown_fields: Some(true),
            ..Default::default()
        },
    );
    crds.replace(CRD, &PostParams::default(), &crd)
        .await
        .expect("loosen the CRD");
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "mtls.migrator.dev/v1alpha1", "kind": "MtlsMigration",
        "metadata": {"name": "unreadable", "namespace": name},
        "spec": {"mode": "SOMETIMES"}
    }))
    .expect("object");
    // The API server serves the new schema a moment after the update.
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        async || raw.create(&PostParams::default(), &bad).await.ok(),
    )
    .await
    .expect("the loosened schema accepts the unreadable spec");
    drop(restore);

    let good: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "mtls.migrator.dev/v1alpha1", "kind": "MtlsMigration",
        "metadata": {"name": "good", "namespace": name},
        "spec": {"mode": "PERMISSIVE"}
    }))
    .expect("object");
    raw.create(&PostParams::default(), &good)
        .await
        .expect("create the readable migration");

    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_mtls-migrator"))
        .args([
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--watch-namespace",
            &name,
        ])
        .env("KUBECONFIG", sb.kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the operator");

    let typed: Api<MtlsMigration> = Api::namespaced(client.clone(), &name);
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let m = typed.get("good").await.ok()?;
            let ready = m
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status.as_str() == "True").then_some(())
        },
    )
    .await
    .expect("the readable migration reaches Ready beside the unreadable one");

    let events: Api<Event> = Api::namespaced(client.clone(), &name);
    let note = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find_map(|e| {
                    let about = e.regarding.as_ref()?.name.as_deref()?;
                    (about == "unreadable" && e.reason.as_deref() == Some("InvalidSpec"))
                        .then(|| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
                })
        },
    )
    .await
    .expect("a Warning event on the unreadable migration");
    assert_eq!(note.0, "Warning");
    assert!(note.1.contains("cannot read"), "{}", note.1);

    operator.kill().await.expect("stop the operator");
    // No finalizer was ever added to it, so it goes at once; a typed client
    // could not even read it back.
    raw.delete("unreadable", &DeleteParams::default())
        .await
        .expect("delete the unreadable migration");
    ns.cleanup().await;
}
