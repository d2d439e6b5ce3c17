//! The sandbox is a real control plane: Istio's own CRD validation, RBAC with
//! service-account tokens, and a Prometheus that scrapes what tests serve.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::json;
use testkit::TestNamespace;
use testkit::pods::{Enrollment, WorkloadPod, create_running_pod};

fn peer_authentication_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("security.istio.io", "v1", "PeerAuthentication"),
        "peerauthentications",
    )
}

fn peer_authentication(name: &str, spec: serde_json::Value) -> DynamicObject {
    let mut obj = DynamicObject::new(name, &peer_authentication_resource());
    obj.data = json!({ "spec": spec });
    obj
}

fn api_status(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API status error, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_peer_authentication_is_accepted() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "pa-valid").await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &peer_authentication_resource());

    let pa = peer_authentication(
        "reviews",
        json!({
            "selector": {"matchLabels": {"app": "reviews"}},
            "mtls": {"mode": "PERMISSIVE"},
            "portLevelMtls": {"9080": {"mode": "STRICT"}},
        }),
    );
    api.create(&PostParams::default(), &pa)
        .await
        .expect("a valid PeerAuthentication is accepted");
    let stored = api.get("reviews").await.expect("read back");
    assert_eq!(stored.data["spec"]["mtls"]["mode"], "PERMISSIVE");
    assert_eq!(
        stored.data["spec"]["portLevelMtls"]["9080"]["mode"],
        "STRICT"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn port_level_mtls_without_selector_is_rejected_by_istio_validation() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "pa-invalid").await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &peer_authentication_resource());

    let pa = peer_authentication(
        "no-selector",
        json!({
            "mtls": {"mode": "PERMISSIVE"},
            "portLevelMtls": {"9080": {"mode": "STRICT"}},
        }),
    );
    let status = api_status(
        api.create(&PostParams::default(), &pa)
            .await
            .expect_err("portLevelMtls without selector must be rejected"),
    );
    assert!(status.is_invalid(), "422 Invalid expected, got {status:?}");
    assert!(
        status.message.contains("selector"),
        "message names the selector rule: {}",
        status.message
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn rbac_limited_service_account_gets_only_what_its_role_grants() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "rbac").await;
    let name = ns.name();

    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "limited"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "limited-pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": name}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let pod = create_running_pod(
        &client,
        name,
        &WorkloadPod::new("reviews", Enrollment::Sidecar),
    )
    .await
    .unwrap();
    let pod_name = pod.metadata.name.unwrap();

    // A real TokenRequest, signed by the API server's service-account key.
    let out = sb
        .kubectl()
        .args(["create", "token", "limited", "-n", name, "--duration=10m"])
        .output()
        .expect("run kubectl create token");
    assert!(
        out.status.success(),
        "kubectl create token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let limited = sb.client_with_token(token.trim()).await;

    let pods: Api<Pod> = Api::namespaced(limited.clone(), name);
    let got = pods.get(&pod_name).await.expect("get on pods is granted");
    assert_eq!(got.metadata.name.as_deref(), Some(pod_name.as_str()));

    let status = api_status(pods.list(&ListParams::default()).await.unwrap_err());
    assert!(status.is_forbidden(), "list pods: {status:?}");
    assert_eq!(status.code, 403);

    let pas: Api<DynamicObject> =
        Api::namespaced_with(limited, name, &peer_authentication_resource());
    let pa = peer_authentication("strict", json!({"mtls": {"mode": "STRICT"}}));
    let status = api_status(pas.create(&PostParams::default(), &pa).await.unwrap_err());
    assert!(
        status.is_forbidden(),
        "create PeerAuthentication: {status:?}"
    );
    assert!(
        status.message.contains("system:serviceaccount:") && status.message.contains("limited"),
        "the denial names the service account: {}",
        status.message
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn prometheus_scrapes_a_registered_endpoint() {
    let sb = testkit::sandbox().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A value unlikely to appear by accident, unique to this run.
    let value = 1000.0 + f64::from(addr.port());
    let body = format!(
        "# HELP sandbox_probe_value A value the test serves.\n\
         # TYPE sandbox_probe_value gauge\n\
         sandbox_probe_value{{side=\"test\"}} {value}\n"
    );
    let app =
        axum::Router::new().route("/metrics", axum::routing::get(move || async move { body }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let job = format!("probe-{}", addr.port());
    let target = sb.register_scrape_target(&job, addr);
    let query = format!("sandbox_probe_value{{job=\"{job}\"}}");
    let samples = sb
        .wait_for_prometheus(&query, |s| !s.is_empty(), Duration::from_secs(30))
        .await;
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].value, value);
    assert_eq!(samples[0].labels["side"], "test");
    assert_eq!(samples[0].labels["instance"], addr.to_string());

    // PromQL over the scraped series, not just a lookup.
    let doubled = sb
        .wait_for_prometheus(
            &format!("sum by (job) ({query}) * 2"),
            |s| s.len() == 1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(doubled[0].value, 2.0 * value);

    // Dropping the guard unregisters the target: `up` for it goes away.
    drop(target);
    sb.wait_for_prometheus(
        &format!("up{{job=\"{job}\"}}"),
        |s| s.is_empty(),
        Duration::from_secs(30),
    )
    .await;
    server.abort();
}
