//! Pods in every enrollment shape pass the real API server's admission and
//! validation, and reach the phases tests put them in; per-test namespaces
//! really go away.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams};
use testkit::pods::{
    Enrollment, Phase, WorkloadPod, create_running_pod, create_running_pods, set_phase, set_ready,
};
use testkit::{TestNamespace, poll_until};

fn condition(pod: &Pod, kind: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

async fn fetch(client: &Client, ns: &str, name: &str) -> Pod {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_enrollment_shape_runs_and_is_ready() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "pods-shapes").await;

    for enrollment in Enrollment::ALL {
        let workload = format!("{enrollment:?}").to_lowercase();
        let spec = WorkloadPod::new(&workload, enrollment).port(8080);
        let created = create_running_pod(&client, ns.name(), &spec)
            .await
            .unwrap_or_else(|e| panic!("{enrollment:?} pod rejected: {e}"));
        let name = created.metadata.name.clone().unwrap();
        let pod = fetch(&client, ns.name(), &name).await;

        assert_eq!(phase(&pod), Some("Running"), "{enrollment:?}");
        assert_eq!(condition(&pod, "Ready").as_deref(), Some("True"));
        assert_eq!(condition(&pod, "ContainersReady").as_deref(), Some("True"));
        assert!(pod.status.as_ref().unwrap().pod_ip.is_some());

        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["app"], workload);
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ReplicaSet");
        assert_eq!(owner.name, spec.replica_set_name());

        let spec = pod.spec.as_ref().unwrap();
        let proxy_in = |list: &Option<Vec<k8s_openapi::api::core::v1::Container>>| {
            list.iter()
                .flatten()
                .find(|c| c.name == "istio-proxy")
                .cloned()
        };
        let tls_mode = labels.get("security.istio.io/tlsMode").map(String::as_str);
        match enrollment {
            Enrollment::Sidecar => {
                assert!(proxy_in(&Some(spec.containers.clone())).is_some());
                assert_eq!(tls_mode, Some("istio"));
            }
            Enrollment::NativeSidecar => {
                let proxy = proxy_in(&spec.init_containers).expect("native sidecar");
                // The API server kept the sidecar's restart policy.
                assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
                assert_eq!(tls_mode, Some("istio"));
            }
            Enrollment::Ambient => {
                assert_eq!(labels["istio.io/dataplane-mode"], "ambient");
                assert_eq!(
                    pod.metadata.annotations.as_ref().unwrap()["ambient.istio.io/redirection"],
                    "enabled"
                );
                assert_eq!(tls_mode, None);
            }
            Enrollment::None => {
                assert!(proxy_in(&Some(spec.containers.clone())).is_none());
                assert_eq!(tls_mode, None);
            }
        }
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn pods_move_between_phases_and_readiness() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "pods-phases").await;
    let spec = WorkloadPod::new("batch", Enrollment::NativeSidecar);
    let pods = create_running_pods(&client, ns.name(), &spec, 2)
        .await
        .unwrap();
    let (a, b) = (
        pods[0].metadata.name.clone().unwrap(),
        pods[1].metadata.name.clone().unwrap(),
    );
    assert_ne!(a, b);

    let unready = set_ready(&client, ns.name(), &a, false).await.unwrap();
    assert_eq!(phase(&unready), Some("Running"));
    assert_eq!(condition(&unready, "Ready").as_deref(), Some("False"));
    let ready = set_ready(&client, ns.name(), &a, true).await.unwrap();
    assert_eq!(condition(&ready, "Ready").as_deref(), Some("True"));

    let done = set_phase(&client, ns.name(), &b, Phase::Succeeded)
        .await
        .unwrap();
    assert_eq!(phase(&done), Some("Succeeded"));
    assert_eq!(condition(&done, "Ready").as_deref(), Some("False"));
    // The pod IP reported while running is kept.
    assert_eq!(
        done.status.as_ref().unwrap().pod_ip,
        pods[1].status.as_ref().unwrap().pod_ip
    );

    // No node is bound, so deletion is immediate rather than waiting for a kubelet.
    let api: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    api.delete(&a, &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt(&a).await.unwrap().is_none());
    ns.cleanup().await;
}

#[tokio::test]
async fn test_namespaces_are_removed_on_cleanup_and_on_drop() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let gone = async |name: String| {
        poll_until(
            Duration::from_secs(20),
            Duration::from_millis(200),
            async || {
                namespaces
                    .get_opt(&name)
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("namespace {name} still exists: {e}"));
    };

    let ns = TestNamespace::create(&client, "cleanup-explicit").await;
    let name = ns.name().to_string();
    create_running_pod(
        &client,
        &name,
        &WorkloadPod::new("web", Enrollment::Sidecar),
    )
    .await
    .unwrap();
    ns.cleanup().await;
    gone(name).await;

    let ns = TestNamespace::create(&client, "cleanup-drop").await;
    let name = ns.name().to_string();
    create_running_pod(
        &client,
        &name,
        &WorkloadPod::new("web", Enrollment::Ambient),
    )
    .await
    .unwrap();
    drop(ns);
    gone(name).await;
}
