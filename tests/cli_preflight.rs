//! `mtls-migrator preflight` against the real sandbox: one namespace per
//! STRICT hazard, the real binary, and its exit code (2 when something
//! blocks, 0 otherwise). Each test asserts the exact set of finding kinds so
//! that a check firing where it should not is caught as well.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use support::cli::{Output, cli};
use testkit::pods::{Enrollment, Phase, WorkloadPod, create_running_pod, set_phase};
use testkit::{Sandbox, TestNamespace};

async fn preflight_json(sb: &Sandbox, ns: &str, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["preflight", "-n", ns, "-o", "json"];
    args.extend_from_slice(extra);
    let out = cli(sb, &args).await;
    let v = out.json();
    (out, v)
}

/// `(kind, severity)` of every finding.
fn kinds(report: &Value) -> BTreeSet<(String, String)> {
    report["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect()
}

fn finding<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} finding in {report:#}"))
}

/// A namespace labelled for sidecar injection, so that only the hazard
/// under test is reported.
async fn mesh_namespace(client: &Client, prefix: &str) -> TestNamespace {
    let ns = TestNamespace::create(client, prefix).await;
    Api::<Namespace>::all(client.clone())
        .patch(
            ns.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": "enabled"}}})),
        )
        .await
        .expect("label namespace");
    ns
}

async fn create<K>(client: &Client, ns: &str, obj: Value) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let obj: K = serde_json::from_value(obj).expect("object JSON");
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create in {ns}: {e}"))
}

async fn service(client: &Client, ns: &str, name: &str, app: &str, headless: bool) -> Service {
    let mut spec = json!({"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    if headless {
        spec["clusterIP"] = json!("None");
    }
    create(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}),
    )
    .await
}

async fn sidecar_pod(client: &Client, ns: &str, workload: &str) {
    create_running_pod(
        client,
        ns,
        &WorkloadPod::new(workload, Enrollment::Sidecar).port(8080),
    )
    .await
    .expect("create pod");
}

fn istio_resource(group: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1", kind))
}

async fn istio_object(client: &Client, ns: &str, group: &str, kind: &str, name: &str, spec: Value) {
    let ar = istio_resource(group, kind);
    let mut obj = DynamicObject::new(name, &ar);
    obj.data = json!({"spec": spec});
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {kind} {ns}/{name}: {e}"));
}

#[tokio::test]
async fn clean_namespace_reports_nothing_and_exits_0() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-clean").await;
    sidecar_pod(&client, ns.name(), "web").await;
    create_running_pod(
        &client,
        ns.name(),
        &WorkloadPod::new("api", Enrollment::Ambient).port(9090),
    )
    .await
    .unwrap();
    service(&client, ns.name(), "web", "web", false).await;

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(report["findings"], json!([]));
    assert_eq!(report["blocking"], false);
    assert_eq!(report["scope"]["kind"], "Namespace");
    assert_eq!(report["read"]["selectedPods"], 2);
    assert_eq!(report["read"]["enrolledPods"], 2);

    let table = cli(sb, &["preflight", "-n", ns.name()]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains(&format!(
            "Nothing blocks STRICT for namespace {}: no findings.",
            ns.name()
        )),
        "{}",
        table.stdout
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn pods_not_enrolled_block_unless_the_selector_leaves_them_out() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-enroll").await;
    sidecar_pod(&client, ns.name(), "api").await;
    create_running_pod(
        &client,
        ns.name(),
        &WorkloadPod::new("legacy", Enrollment::None).port(8080),
    )
    .await
    .unwrap();

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(kinds(&report), expect(&[("PodsNotEnrolled", "Blocking")]));
    let f = finding(&report, "PodsNotEnrolled");
    assert!(f["message"].as_str().unwrap().contains("legacy-"), "{f}");
    assert_eq!(report["blocking"], true);

    // A workload scope that selects only the enrolled workload is clean.
    let (out, report) = preflight_json(sb, ns.name(), &["--selector", "app=api"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(report["findings"], json!([]));
    assert_eq!(report["scope"]["kind"], "Workload");
    assert_eq!(report["scope"]["selector"], json!({"app": "api"}));
    ns.cleanup().await;
}

#[tokio::test]
async fn destination_rule_disabling_tls_in_another_namespace_blocks() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-dr").await;
    let clients = mesh_namespace(&client, "pf-dr-clients").await;
    sidecar_pod(&client, ns.name(), "web").await;
    service(&client, ns.name(), "web", "web", false).await;
    istio_object(
        &client,
        clients.name(),
        "networking.istio.io",
        "DestinationRule",
        "web-plain",
        json!({
            "host": format!("web.{}.svc.cluster.local", ns.name()),
            "trafficPolicy": {"tls": {"mode": "DISABLE"}},
        }),
    )
    .await;

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        kinds(&report),
        expect(&[("DestinationRuleForcesPlaintext", "Blocking")])
    );
    assert_eq!(
        finding(&report, "DestinationRuleForcesPlaintext")["object"],
        format!("DestinationRule {}/web-plain", clients.name())
    );

    // The human table says what, why and what to do.
    let table = cli(sb, &["preflight", "-n", ns.name()]).await;
    assert_eq!(table.code, 2);
    let text = &table.stdout;
    assert!(text.contains("SEVERITY"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains("DestinationRuleForcesPlaintext"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.starts_with("BLOCKING"), "{row}");
    assert!(text.contains("why:") && text.contains("to do:"), "{text}");
    assert!(text.contains("ISTIO_MUTUAL"), "{text}");
    assert!(text.contains("1 blocking finding"), "{text}");
    clients.cleanup().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn duplicate_namespace_wide_peer_authentications_block() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-dup-pa").await;
    sidecar_pod(&client, ns.name(), "web").await;
    for name in ["default", "also-default"] {
        istio_object(
            &client,
            ns.name(),
            "security.istio.io",
            "PeerAuthentication",
            name,
            json!({"mtls": {"mode": "PERMISSIVE"}}),
        )
        .await;
    }

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        kinds(&report),
        expect(&[("DuplicatePeerAuthentication", "Blocking")])
    );
    let object = finding(&report, "DuplicatePeerAuthentication")["object"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        object.contains("default") && object.contains("also-default"),
        "{object}"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn http_probe_without_rewrite_blocks() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-probe").await;
    let mut pod = WorkloadPod::new("web", Enrollment::Sidecar)
        .port(8080)
        .annotation("sidecar.istio.io/rewriteAppHTTPProbers", "false")
        .build();
    let app = &mut pod.spec.as_mut().unwrap().containers[0];
    app.readiness_probe = Some(
        serde_json::from_value(json!({"httpGet": {"path": "/healthz", "port": 8080}})).unwrap(),
    );
    let created = Api::<Pod>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    set_phase(
        &client,
        ns.name(),
        created.metadata.name.as_deref().unwrap(),
        Phase::Running,
    )
    .await
    .expect("pod running");

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        kinds(&report),
        expect(&[("HttpProbeWithoutRewrite", "Blocking")])
    );
    assert_eq!(
        finding(&report, "HttpProbeWithoutRewrite")["object"],
        format!("workload {}/web", ns.name())
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn prometheus_scrape_on_an_app_port_warns() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-scrape").await;
    create_running_pod(
        &client,
        ns.name(),
        &WorkloadPod::new("web", Enrollment::Sidecar)
            .port(8080)
            .annotation("prometheus.io/scrape", "true")
            .annotation("prometheus.io/port", "8080"),
    )
    .await
    .unwrap();

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 0, "warnings alone do not fail: {}", out.stderr);
    assert_eq!(
        kinds(&report),
        expect(&[("PrometheusScrapesAppPort", "Warning")])
    );
    assert_eq!(report["blocking"], false);
    ns.cleanup().await;
}

/// Deletes a cluster-scoped webhook configuration even if the test fails
/// (namespace cleanup does not reach it). kubectl, because a kube client is
/// tied to the test's runtime, which may be gone when this drops.
struct WebhookGuard(&'static Sandbox, String);

impl Drop for WebhookGuard {
    fn drop(&mut self) {
        let _ = self
            .0
            .kubectl()
            .args([
                "delete",
                "validatingwebhookconfiguration",
                &self.1,
                "--ignore-not-found",
            ])
            .output();
    }
}

#[tokio::test]
async fn webhook_served_in_scope_blocks() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-webhook").await;
    sidecar_pod(&client, ns.name(), "policy").await;
    service(&client, ns.name(), "policy-webhook", "policy", false).await;
    let name = format!("{}-policy", ns.name());
    // Rules that match nothing real, so the failing-closed webhook cannot
    // disturb other tests sharing the API server.
    let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "validate.policy.example.com",
            "clientConfig": {"service": {"namespace": ns.name(), "name": "policy-webhook", "port": 80}},
            "rules": [{"operations": ["CREATE"], "apiGroups": ["preflight-test.invalid"],
                       "apiVersions": ["v1"], "resources": ["nothings"]}],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("create webhook configuration");
    let _guard = WebhookGuard(sb, name.clone());

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        kinds(&report),
        expect(&[("WebhookServedInScope", "Blocking")])
    );
    assert_eq!(
        finding(&report, "WebhookServedInScope")["object"],
        format!("ValidatingWebhookConfiguration {name} (webhook validate.policy.example.com)")
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn headless_service_warns() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-headless").await;
    sidecar_pod(&client, ns.name(), "db").await;
    service(&client, ns.name(), "db-peers", "db", true).await;

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(kinds(&report), expect(&[("HeadlessService", "Warning")]));
    assert_eq!(
        finding(&report, "HeadlessService")["object"],
        format!("Service {}/db-peers", ns.name())
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn jobs_and_cronjobs_opted_out_of_injection_warn() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-jobs").await;
    let template = json!({
        "metadata": {"labels": {"sidecar.istio.io/inject": "false"}},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "task", "image": "registry.invalid/task:1"}]},
    });
    create::<Job>(
        &client,
        ns.name(),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate-db"},
               "spec": {"template": template}}),
    )
    .await;
    create::<CronJob>(
        &client,
        ns.name(),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report"},
               "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}}),
    )
    .await;

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        kinds(&report),
        expect(&[("JobOptedOutOfInjection", "Warning")])
    );
    let objects: BTreeSet<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["object"].as_str().unwrap())
        .collect();
    assert_eq!(
        objects,
        BTreeSet::from([
            format!("Job {}/migrate-db", ns.name()).as_str(),
            format!("CronJob {}/report", ns.name()).as_str(),
        ])
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn server_first_port_warns() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-mysql").await;
    create_running_pod(
        &client,
        ns.name(),
        &WorkloadPod::new("mysql", Enrollment::Sidecar).port(3306),
    )
    .await
    .unwrap();

    let (out, report) = preflight_json(sb, ns.name(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(kinds(&report), expect(&[("ServerFirstPort", "Warning")]));
    assert_eq!(
        finding(&report, "ServerFirstPort")["object"],
        format!("workload {}/mysql port 3306", ns.name())
    );
    assert!(
        finding(&report, "ServerFirstPort")["message"]
            .as_str()
            .unwrap()
            .contains("MySQL")
    );
    ns.cleanup().await;
}

/// Serves Istio destination-reported request counters for `ns/web`: one
/// plaintext client (`legacy`) and one mTLS client (`frontend`), growing at
/// fixed rates per second.
async fn serve_istio_metrics(ns: String) -> SocketAddr {
    let started = Instant::now();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let ns = ns.clone();
            async move {
                let t = started.elapsed().as_secs_f64();
                let series = |source: &str, policy: &str, rate: f64| {
                    format!(
                        "istio_requests_total{{reporter=\"destination\",destination_workload=\"web\",\
                         destination_workload_namespace=\"{ns}\",source_workload=\"{source}\",\
                         source_workload_namespace=\"{ns}\",connection_security_policy=\"{policy}\",\
                         response_code=\"200\",response_flags=\"-\"}} {}\n",
                        (t * rate).floor()
                    )
                };
                format!(
                    "# TYPE istio_requests_total counter\n{}{}",
                    series("legacy", "none", 10.0),
                    series("frontend", "mutual_tls", 30.0)
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn plaintext_sources_from_prometheus_block() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-plaintext").await;
    sidecar_pod(&client, ns.name(), "web").await;
    let addr = serve_istio_metrics(ns.name().to_string()).await;
    let _target = sb.register_scrape_target(&format!("cli-preflight-{}", ns.name()), addr);
    sb.wait_for_prometheus(
        &format!(
            "sum(rate(istio_requests_total{{destination_workload_namespace=\"{}\",\
             connection_security_policy!=\"mutual_tls\"}}[30s]))",
            ns.name()
        ),
        |s| s.first().is_some_and(|s| s.value > 0.0),
        Duration::from_secs(60),
    )
    .await;

    let (out, report) = preflight_json(
        sb,
        ns.name(),
        &["--prometheus-url", sb.prometheus_url(), "--window", "30s"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(kinds(&report), expect(&[("PlaintextSource", "Blocking")]));
    assert_eq!(
        finding(&report, "PlaintextSource")["object"],
        format!("source {}/legacy", ns.name())
    );
    let p = &report["prometheus"];
    assert_eq!(p["reading"]["result"], "Traffic");
    assert_eq!(p["window"], "30s");
    let ratio = p["reading"]["ratio"].as_f64().unwrap();
    assert!((0.15..0.35).contains(&ratio), "plaintext share {ratio}");
    ns.cleanup().await;
}

#[tokio::test]
async fn no_telemetry_is_a_warning_not_a_pass() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = mesh_namespace(&client, "pf-nodata").await;
    sidecar_pod(&client, ns.name(), "web").await;

    let (out, report) =
        preflight_json(sb, ns.name(), &["--prometheus-url", sb.prometheus_url()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        kinds(&report),
        expect(&[("EvidenceUnavailable", "Warning")])
    );
    assert_eq!(report["prometheus"]["reading"]["result"], "NoData");
    ns.cleanup().await;
}

#[tokio::test]
async fn bad_selector_is_a_clear_error() {
    let sb = testkit::sandbox().await;
    let out = cli(
        sb,
        &["preflight", "-n", "default", "--selector", "app!=web"],
    )
    .await;
    assert_eq!(out.code, 1, "usage errors are not 'blocking' (2)");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("invalid --selector") && out.stderr.contains("only equality"),
        "{}",
        out.stderr
    );
    let out = cli(sb, &["preflight", "-n", "default", "--selector", "app"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("expected key=value"), "{}", out.stderr);
}

#[tokio::test]
async fn missing_namespace_is_an_error() {
    let sb = testkit::sandbox().await;
    let out = cli(sb, &["preflight", "-n", "no-such-namespace-xyz"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("\"no-such-namespace-xyz\" not found"),
        "{}",
        out.stderr
    );
}
