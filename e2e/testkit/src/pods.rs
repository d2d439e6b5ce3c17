//! Pods in the shapes Istio's injection produces, materialized through a real
//! API server that has no kubelet.
//!
//! Nothing runs pods in the sandbox: a pod is created through the API server
//! (so admission and validation are real) and its status is then written
//! through the `status` subresource, the way a kubelet would report it.
//!
//! Pods look like Deployment pods: name `<workload>-<hash>-<suffix>`, labels
//! `app=<workload>` and `pod-template-hash=<hash>`, and a controlling
//! ownerReference to ReplicaSet `<workload>-<hash>` (apps/v1). The owner's uid
//! is made up; nothing garbage-collects here.
//!
//! `spec.nodeName` stays empty on purpose: the API server deletes an
//! unscheduled pod at once, whereas a pod bound to a node waits for a kubelet
//! that never comes and stays Terminating.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), kube::Error> {
//! use testkit::pods::{create_running_pod, Enrollment, WorkloadPod};
//! let spec = WorkloadPod::new("reviews", Enrollment::Sidecar).port(9080);
//! let pod = create_running_pod(&client, "ns-1", &spec).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Image the injected proxy containers name; never pulled (there is no kubelet).
pub const PROXY_IMAGE: &str = "docker.io/istio/proxyv2:1.28.0";
/// Annotation Istio's sidecar injector writes on every injected pod.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Label that tells clients a pod's proxy accepts Istio mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Label that puts a pod (or namespace) in ambient mode.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Annotation istio-cni writes once a pod's traffic is redirected to ztunnel.
pub const AMBIENT_REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// Label Istio uses for the workload's canonical service name.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";

/// How a pod is enrolled in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enrollment {
    /// Classic injection: `istio-proxy` in `containers`, `istio-init` init
    /// container, `sidecar.istio.io/status` annotation, labels
    /// `security.istio.io/tlsMode=istio` and `service.istio.io/canonical-name`.
    Sidecar,
    /// Native sidecar injection: `istio-proxy` in `initContainers` with
    /// `restartPolicy: Always`, plus the same annotation and labels.
    NativeSidecar,
    /// Ambient: label `istio.io/dataplane-mode=ambient` and annotation
    /// `ambient.istio.io/redirection: enabled`; no proxy container, no tlsMode label.
    Ambient,
    /// Not enrolled: a plain application pod.
    None,
}

impl Enrollment {
    /// Every shape, for tests that cover them all.
    pub const ALL: [Enrollment; 4] = [
        Enrollment::Sidecar,
        Enrollment::NativeSidecar,
        Enrollment::Ambient,
        Enrollment::None,
    ];
}

/// Pod phases a test can put a pod in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Created, not started (what the API server stores on create).
    Pending,
    /// Running with every container ready (Ready and ContainersReady true).
    Running,
    /// All containers exited 0 (a completed Job pod); not Ready.
    Succeeded,
    /// A container exited non-zero; not Ready.
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// Builder for one pod of a Deployment-shaped workload.
///
/// Every pod built from the same `WorkloadPod` shares the workload's
/// pod-template-hash and owner; each [`WorkloadPod::build`] picks a fresh
/// random name suffix unless [`WorkloadPod::pod_name`] fixed the name.
#[derive(Clone, Debug)]
pub struct WorkloadPod {
    workload: String,
    enrollment: Enrollment,
    template_hash: String,
    pod_name: Option<String>,
    service_account: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    ports: Vec<u16>,
    pod_ip: Option<String>,
}

impl WorkloadPod {
    /// A pod of `workload` in the given enrollment shape. The
    /// pod-template-hash is derived from the workload name (stable across
    /// runs); the service account is `default`.
    pub fn new(workload: impl Into<String>, enrollment: Enrollment) -> Self {
        let workload = workload.into();
        let template_hash = template_hash_for(&workload);
        Self {
            workload,
            enrollment,
            template_hash,
            pod_name: None,
            service_account: "default".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            ports: Vec::new(),
            pod_ip: None,
        }
    }

    /// Overrides the pod-template-hash (e.g. to model a rollout's new ReplicaSet).
    pub fn template_hash(mut self, hash: impl Into<String>) -> Self {
        self.template_hash = hash.into();
        self
    }

    /// Fixes the pod's full name instead of `<workload>-<hash>-<random>`.
    pub fn pod_name(mut self, name: impl Into<String>) -> Self {
        self.pod_name = Some(name.into());
        self
    }

    /// Sets `spec.serviceAccountName` (Istio's identity derives from it).
    pub fn service_account(mut self, name: impl Into<String>) -> Self {
        self.service_account = name.into();
        self
    }

    /// Adds (or overrides) a pod label; applied after the shape's labels.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds (or overrides) a pod annotation; applied after the shape's annotations.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Declares a TCP container port on the application container.
    pub fn port(mut self, port: u16) -> Self {
        self.ports.push(port);
        self
    }

    /// Pod IP reported once the pod runs; a random 10.x.y.z address otherwise.
    pub fn pod_ip(mut self, ip: impl Into<String>) -> Self {
        self.pod_ip = Some(ip.into());
        self
    }

    /// The workload name (Istio's `destination_workload` for these pods).
    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// The enrollment shape.
    pub fn enrollment(&self) -> Enrollment {
        self.enrollment
    }

    /// The owning ReplicaSet's name, `<workload>-<hash>`.
    pub fn replica_set_name(&self) -> String {
        format!("{}-{}", self.workload, self.template_hash)
    }

    /// The pod object to create (no status). Each call without a fixed
    /// [`pod_name`](Self::pod_name) gives a new random name.
    pub fn build(&self) -> Pod {
        let name = self
            .pod_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.replica_set_name(), random_suffix()));
        let mut labels: BTreeMap<String, String> = BTreeMap::new();
        labels.insert("app".into(), self.workload.clone());
        labels.insert("pod-template-hash".into(), self.template_hash.clone());
        let mut annotations: BTreeMap<String, String> = BTreeMap::new();

        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({"containerPort": p, "protocol": "TCP"}))
            .collect();
        let app = json!({
            "name": self.workload,
            "image": format!("registry.invalid/{}:test", self.workload),
            "ports": ports,
        });
        let mut containers = vec![app];
        let mut init_containers: Vec<Value> = Vec::new();
        let mut volumes: Vec<Value> = Vec::new();

        match self.enrollment {
            Enrollment::Sidecar | Enrollment::NativeSidecar => {
                labels.insert(TLS_MODE_LABEL.into(), "istio".into());
                labels.insert(CANONICAL_NAME_LABEL.into(), self.workload.clone());
                labels.insert(
                    "service.istio.io/canonical-revision".into(),
                    "latest".into(),
                );
                init_containers.push(istio_init());
                volumes.push(json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}));
                let native = self.enrollment == Enrollment::NativeSidecar;
                let status = if native {
                    json!({"initContainers": ["istio-init", "istio-proxy"], "containers": null,
                           "volumes": ["istio-envoy"], "imagePullSecrets": null, "revision": "default"})
                } else {
                    json!({"initContainers": ["istio-init"], "containers": ["istio-proxy"],
                           "volumes": ["istio-envoy"], "imagePullSecrets": null, "revision": "default"})
                };
                annotations.insert(SIDECAR_STATUS_ANNOTATION.into(), status.to_string());
                let mut proxy = istio_proxy(&self.service_account);
                if native {
                    proxy["restartPolicy"] = json!("Always");
                    init_containers.push(proxy);
                } else {
                    containers.push(proxy);
                }
            }
            Enrollment::Ambient => {
                labels.insert(DATAPLANE_MODE_LABEL.into(), "ambient".into());
                annotations.insert(AMBIENT_REDIRECTION_ANNOTATION.into(), "enabled".into());
            }
            Enrollment::None => {}
        }
        labels.extend(self.labels.clone());
        annotations.extend(self.annotations.clone());

        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": self.replica_set_name(),
                    "uid": made_up_uid(&self.replica_set_name()),
                    "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "serviceAccountName": self.service_account,
                "initContainers": init_containers,
                "containers": containers,
                "volumes": volumes,
            },
        });
        serde_json::from_value(pod).expect("pod JSON matches the Pod schema")
    }

    fn ip(&self) -> String {
        self.pod_ip.clone().unwrap_or_else(random_pod_ip)
    }
}

/// Creates the pod as the API server stores it: phase Pending, no status.
pub async fn create_pod(client: &Client, ns: &str, spec: &WorkloadPod) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &spec.build()).await
}

/// Creates the pod and reports it Running with every container ready
/// (conditions PodScheduled, Initialized, ContainersReady and Ready true,
/// a pod IP, and container statuses), as a kubelet would.
pub async fn create_running_pod(
    client: &Client,
    ns: &str,
    spec: &WorkloadPod,
) -> Result<Pod, kube::Error> {
    let pod = create_pod(client, ns, spec).await?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    write_status(client, ns, &name, &pod, Phase::Running, &spec.ip()).await
}

/// Creates `replicas` running pods of the same workload (distinct names).
pub async fn create_running_pods(
    client: &Client,
    ns: &str,
    spec: &WorkloadPod,
    replicas: usize,
) -> Result<Vec<Pod>, kube::Error> {
    let mut pods = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        let one = if spec.pod_name.is_some() {
            spec.clone().pod_name(format!(
                "{}-{}",
                spec.pod_name.as_deref().unwrap_or_default(),
                pods.len()
            ))
        } else {
            spec.clone()
        };
        pods.push(create_running_pod(client, ns, &one).await?);
    }
    Ok(pods)
}

/// Moves an existing pod to `phase` through the status subresource, with
/// matching conditions and container states. The pod IP already reported is
/// kept (Kubernetes forbids changing it); a new random one is used if none was.
///
/// Only a kubelet keeps pods from leaving Succeeded or Failed; the API server
/// accepts any move, so tests must not rely on that rule here.
pub async fn set_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: Phase,
) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = api.get(name).await?;
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(random_pod_ip);
    write_status(client, ns, name, &pod, phase, &ip).await
}

/// Flips a Running pod's Ready and ContainersReady conditions (a failing
/// readiness probe) without changing its phase.
pub async fn set_ready(
    client: &Client,
    ns: &str,
    name: &str,
    ready: bool,
) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = api.get(name).await?;
    let mut conditions: Vec<Value> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| serde_json::to_value(c).expect("condition serializes"))
        .collect();
    let now = now();
    for c in &mut conditions {
        let kind = c["type"].as_str().unwrap_or_default().to_string();
        if kind == "Ready" || kind == "ContainersReady" {
            let want = if ready { "True" } else { "False" };
            if c["status"] != want {
                c["status"] = json!(want);
                c["lastTransitionTime"] = json!(now);
            }
        }
    }
    let patch = json!({"status": {"conditions": conditions}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    pod: &Pod,
    phase: Phase,
    ip: &str,
) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = now();
    let spec = pod.spec.clone().unwrap_or_default();
    let (running, ready) = (phase == Phase::Running, phase == Phase::Running);
    let cond = |kind: &str, ok: bool, reason: Option<&str>| {
        let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        c
    };
    let conditions = match phase {
        Phase::Pending => vec![cond("PodScheduled", true, None)],
        Phase::Running => vec![
            cond("PodScheduled", true, None),
            cond("Initialized", true, None),
            cond("ContainersReady", true, None),
            cond("Ready", true, None),
        ],
        Phase::Succeeded | Phase::Failed => vec![
            cond("PodScheduled", true, None),
            cond("Initialized", true, Some("PodCompleted")),
            cond("ContainersReady", false, Some("PodCompleted")),
            cond("Ready", false, Some("PodCompleted")),
        ],
    };
    let state = |exit: i32| match phase {
        Phase::Pending => json!({"waiting": {"reason": "ContainerCreating"}}),
        Phase::Running => json!({"running": {"startedAt": now}}),
        Phase::Succeeded | Phase::Failed => json!({"terminated": {
            "exitCode": exit, "reason": if exit == 0 { "Completed" } else { "Error" },
            "startedAt": now, "finishedAt": now}}),
    };
    let exit = if phase == Phase::Failed { 1 } else { 0 };
    let container_status = |name: &str, image: &str, exit: i32, is_ready: bool, started: bool| {
        json!({
            "name": name, "image": image, "imageID": format!("{image}@sha256:{}", "0".repeat(64)),
            "ready": is_ready, "started": started, "restartCount": 0, "state": state(exit),
        })
    };
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            container_status(
                &c.name,
                c.image.as_deref().unwrap_or_default(),
                exit,
                ready,
                running,
            )
        })
        .collect();
    let init_containers: Vec<Value> = spec
        .init_containers
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let image = c.image.as_deref().unwrap_or_default();
            let restartable = c.restart_policy.as_deref() == Some("Always");
            if restartable {
                // A native sidecar keeps running beside the app containers.
                container_status(&c.name, image, exit, ready, running)
            } else if phase == Phase::Pending {
                container_status(&c.name, image, 0, false, false)
            } else {
                json!({"name": c.name, "image": image,
                       "imageID": format!("{image}@sha256:{}", "0".repeat(64)),
                       "ready": true, "restartCount": 0,
                       "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                "startedAt": now, "finishedAt": now}}})
            }
        })
        .collect();
    let mut status = json!({
        "phase": phase.as_str(),
        "conditions": conditions,
        "containerStatuses": containers,
        "initContainerStatuses": init_containers,
        "hostIP": "10.0.0.1",
        "hostIPs": [{"ip": "10.0.0.1"}],
        "startTime": now,
        "qosClass": "BestEffort",
    });
    if phase != Phase::Pending {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    let patch = json!({"status": status});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

fn istio_init() -> Value {
    json!({
        "name": "istio-init",
        "image": PROXY_IMAGE,
        "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                 "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false,
        },
    })
}

fn istio_proxy(service_account: &str) -> Value {
    json!({
        "name": "istio-proxy",
        "image": PROXY_IMAGE,
        "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "SERVICE_ACCOUNT", "value": service_account},
        ],
        "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true},
        "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}],
    })
}

// The alphabet Kubernetes uses for generated name suffixes and template hashes
// (no vowels, no ambiguous characters).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn encode(mut n: u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// FNV-1a: a stable hash so a workload keeps its template hash across runs.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn template_hash_for(workload: &str) -> String {
    encode(fnv1a(workload), 10)
}

fn made_up_uid(owner: &str) -> String {
    let a = fnv1a(owner);
    let b = fnv1a(&format!("{owner}/rs"));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn random_u64() -> u64 {
    // RandomState is seeded randomly per instance: enough for unique names.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

fn random_suffix() -> String {
    encode(random_u64(), 5)
}

fn random_pod_ip() -> String {
    let n = random_u64();
    format!(
        "10.{}.{}.{}",
        64 + (n % 128),
        (n >> 8) % 256,
        1 + (n >> 16) % 254
    )
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container_names(list: &Option<Vec<k8s_openapi::api::core::v1::Container>>) -> Vec<String> {
        list.iter().flatten().map(|c| c.name.clone()).collect()
    }

    #[test]
    fn deployment_shape() {
        let spec = WorkloadPod::new("reviews", Enrollment::None).port(9080);
        let pod = spec.build();
        let meta = &pod.metadata;
        let name = meta.name.clone().unwrap();
        let rs = spec.replica_set_name();
        assert!(name.starts_with(&format!("{rs}-")), "{name} under {rs}");
        assert_eq!(name.len(), rs.len() + 6);
        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels["app"], "reviews");
        assert_eq!(format!("reviews-{}", labels["pod-template-hash"]), rs);
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", rs.as_str())
        );
        assert_eq!(owner.controller, Some(true));
        // A second pod of the workload shares the hash but not the name.
        assert_ne!(spec.build().metadata.name.unwrap(), name);
        assert_eq!(
            WorkloadPod::new("reviews", Enrollment::Ambient).replica_set_name(),
            rs
        );
    }

    #[test]
    fn enrollment_shapes() {
        let sidecar = WorkloadPod::new("a", Enrollment::Sidecar).build();
        let s = sidecar.spec.as_ref().unwrap();
        assert_eq!(
            container_names(&Some(s.containers.clone())),
            ["a", "istio-proxy"]
        );
        assert_eq!(container_names(&s.init_containers), ["istio-init"]);
        let labels = sidecar.metadata.labels.clone().unwrap();
        assert_eq!(labels[TLS_MODE_LABEL], "istio");
        let status: Value = serde_json::from_str(
            &sidecar.metadata.annotations.clone().unwrap()[SIDECAR_STATUS_ANNOTATION],
        )
        .unwrap();
        assert_eq!(status["containers"], json!(["istio-proxy"]));

        let native = WorkloadPod::new("a", Enrollment::NativeSidecar).build();
        let s = native.spec.as_ref().unwrap();
        assert_eq!(container_names(&Some(s.containers.clone())), ["a"]);
        assert_eq!(
            container_names(&s.init_containers),
            ["istio-init", "istio-proxy"]
        );
        let proxy = &s.init_containers.as_ref().unwrap()[1];
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            native.metadata.labels.clone().unwrap()[TLS_MODE_LABEL],
            "istio"
        );

        let ambient = WorkloadPod::new("a", Enrollment::Ambient).build();
        let labels = ambient.metadata.labels.clone().unwrap();
        assert_eq!(labels[DATAPLANE_MODE_LABEL], "ambient");
        assert!(!labels.contains_key(TLS_MODE_LABEL));
        assert_eq!(
            ambient.metadata.annotations.clone().unwrap()[AMBIENT_REDIRECTION_ANNOTATION],
            "enabled"
        );
        assert_eq!(ambient.spec.unwrap().containers.len(), 1);

        let plain = WorkloadPod::new("a", Enrollment::None).build();
        assert!(plain.metadata.annotations.unwrap_or_default().is_empty());
        assert!(!plain.metadata.labels.unwrap().contains_key(TLS_MODE_LABEL));
    }

    #[test]
    fn overrides_win() {
        let pod = WorkloadPod::new("a", Enrollment::Sidecar)
            .label(TLS_MODE_LABEL, "disabled")
            .pod_name("fixed")
            .build();
        assert_eq!(pod.metadata.name.as_deref(), Some("fixed"));
        assert_eq!(pod.metadata.labels.unwrap()[TLS_MODE_LABEL], "disabled");
    }
}
