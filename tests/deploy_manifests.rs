//! `config/`: the manifests apply to a real API server with `kubectl apply -k
//! config/default`, and the Deployment's pod passes Pod Security
//! `restricted` as the API server's admission enforces it in the operator's
//! namespace.

mod deploy_support;

use deploy_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

fn deployment_yaml() -> Value {
    yaml_document(&repo().join("config/manager/deployment.yaml"))
}

#[test]
fn the_crd_in_config_is_the_generated_one() {
    // kustomize loads nothing outside config/, hence the copy.
    let copy = std::fs::read_to_string(
        repo().join("config/crd/bases/mtls.migrator.dev_mtlsmigrations.yaml"),
    )
    .expect("read config/crd/bases copy");
    assert!(
        copy == mtls_migrator::api::crd_yaml(),
        "config/crd/bases/mtls.migrator.dev_mtlsmigrations.yaml is stale: \
         cp crds/mtlsmigration.yaml config/crd/bases/mtls.migrator.dev_mtlsmigrations.yaml"
    );
}

#[test]
fn the_deployment_runs_two_replicas_with_leader_election() {
    let d = deployment_yaml();
    assert_eq!(d["metadata"]["namespace"], OPERATOR_NAMESPACE);
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args.first(), Some(&"run"));
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    assert!(args.contains(&"--http-addr=0.0.0.0:8080"), "{args:?}");
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    for key in ["requests", "limits"] {
        assert!(
            c["resources"][key]["memory"].is_string(),
            "resources.{key}.memory"
        );
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    // The flags the Deployment passes exist (clap would refuse the pod otherwise).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mtls-migrator"))
        .args(["run", "--help"])
        .output()
        .expect("run mtls-migrator run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--leader-elect", "--http-addr", "--prometheus-url"] {
        assert!(help.contains(flag), "`run` has no {flag}");
    }
    for var in [
        "POD_NAME",
        "POD_NAMESPACE",
        "MTLS_LOG_FORMAT",
        "MTLS_PROMETHEUS_URL",
    ] {
        assert!(help.contains(var), "`run --help` does not mention {var}");
    }
}

#[test]
fn there_is_one_sample_per_scope() {
    let dir = repo().join("config/samples");
    let mut scopes = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read config/samples") {
        let path = entry.expect("dir entry").path();
        if path.file_name().and_then(|n| n.to_str()) == Some("kustomization.yaml") {
            continue;
        }
        let m = yaml_document(&path);
        assert_eq!(m["kind"], "MtlsMigration", "{}", path.display());
        let scope = match (&m["spec"]["selector"], m["metadata"]["namespace"].as_str()) {
            (Value::Object(_), _) => "workload",
            (_, Some("istio-system")) => "mesh",
            _ => "namespace",
        };
        scopes.push(scope);
    }
    scopes.sort();
    assert_eq!(scopes, ["mesh", "namespace", "workload"]);
}

/// Edits a pod so it breaks one Pod Security `restricted` control.
type Weakening = fn(&mut Value);

/// The pod a Deployment's ReplicaSet would create, named for this test.
fn pod_from_template(deployment: &Deployment, name: &str) -> Value {
    let template = deployment.spec.as_ref().expect("spec").template.clone();
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": serde_json::to_value(template.metadata.unwrap_or_default()).unwrap(),
        "spec": serde_json::to_value(template.spec.expect("template.spec")).unwrap(),
    });
    pod["metadata"]["name"] = json!(name);
    pod
}

#[tokio::test]
async fn config_default_applies_and_its_pod_passes_restricted_admission() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;

    let out = apply_default_config(sb).await;
    for kind in [
        "namespace/mtls-migrator-system",
        "customresourcedefinition.apiextensions.k8s.io/mtlsmigrations.mtls.migrator.dev",
        "serviceaccount/mtls-migrator",
        "clusterrole.rbac.authorization.k8s.io/mtls-migrator",
        "clusterrolebinding.rbac.authorization.k8s.io/mtls-migrator",
        "role.rbac.authorization.k8s.io/mtls-migrator-leader-election",
        "rolebinding.rbac.authorization.k8s.io/mtls-migrator-leader-election",
        "deployment.apps/mtls-migrator",
    ] {
        assert!(
            out.contains(kind),
            "kubectl apply output lacks {kind}:\n{out}"
        );
    }
    // A second apply changes nothing and still succeeds.
    let again = apply_default_config(sb).await;
    assert!(!again.contains(" created"), "{again}");

    let ns = Api::<Namespace>::all(client.clone())
        .get(OPERATOR_NAMESPACE)
        .await
        .expect("operator namespace");
    assert_eq!(
        ns.metadata.labels.unwrap_or_default()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // No controller-manager runs here, so do the ReplicaSet's job: create a
    // pod from the template, which the PodSecurity admission plugin checks.
    let deployment = Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .get("mtls-migrator")
        .await
        .expect("the applied Deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let create = async |body: &Value| {
        let pod: Pod = serde_json::from_value(body.clone()).expect("pod JSON");
        pods.create(&PostParams::default(), &pod).await
    };
    let name = unique("admission-check-");
    let pod = pod_from_template(&deployment, &name);
    let created = create(&pod).await;
    assert!(
        created.is_ok(),
        "restricted admission refused the Deployment's pod: {created:?}"
    );
    pods.delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the admission-check pod");

    // Each weakening is refused, so admission really is on, and each control
    // in the manifest is one restricted needs.
    let weakenings: [(&str, Weakening); 5] = [
        ("allowPrivilegeEscalation: true", |p| {
            p["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true)
        }),
        ("capabilities not dropped", |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"] = json!({})
        }),
        ("no seccomp profile", |p| {
            p["spec"]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("seccompProfile");
        }),
        ("runAsNonRoot unset", |p| {
            p["spec"]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("runAsNonRoot");
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("runAsNonRoot");
        }),
        ("runAsUser: 0", |p| {
            p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0)
        }),
    ];
    for (what, weaken) in weakenings {
        let mut pod = pod_from_template(&deployment, &unique("weakened-"));
        weaken(&mut pod);
        match create(&pod).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403, "{what}: {s:?}");
                assert!(
                    s.message
                        .contains("violates PodSecurity \"restricted:latest\""),
                    "{what}: {}",
                    s.message
                );
            }
            other => panic!("a pod with {what} was not refused: {other:?}"),
        }
    }
}

#[tokio::test]
async fn samples_pass_the_api_servers_validation() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = testkit::TestNamespace::create(&client, "deploy-samples").await;
    for file in [
        "mtls_v1alpha1_mtlsmigration_workload.yaml",
        "mtls_v1alpha1_mtlsmigration_namespace.yaml",
        "mtls_v1alpha1_mtlsmigration_mesh.yaml",
    ] {
        let path = repo().join("config/samples").join(file);
        // The mesh-wide sample names Istio's root namespace itself.
        let namespace = yaml_document(&path)["metadata"]["namespace"]
            .as_str()
            .unwrap_or(ns.name())
            .to_string();
        let out = sb
            .kubectl()
            .args(["apply", "--dry-run=server", "-n", &namespace, "-f"])
            .arg(&path)
            .output()
            .expect("kubectl apply --dry-run=server");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ns.cleanup().await;
}
