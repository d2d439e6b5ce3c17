//! A pod as the data plane sees it: which workload it belongs to, how it is
//! enrolled, whether it serves. Derived from the pod object alone, by the
//! twin's own reading of Istio's conventions.

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use crate::istio_model::{Dataplane, Labels};

/// Label injection puts on pods whose proxy accepts Istio mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Annotation istio-cni writes once a pod's traffic goes through ztunnel.
pub const AMBIENT_REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    /// Istio's `*_workload` label value for this pod.
    pub workload: String,
    pub labels: Labels,
    pub dataplane: Dataplane,
    pub tls_mode_istio: bool,
    pub service_account: String,
    /// Running, Ready, and not being deleted: it takes traffic.
    pub serving: bool,
}

impl PodView {
    pub fn from_pod(pod: &Pod) -> PodView {
        let meta = &pod.metadata;
        let labels: Labels = meta.labels.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let proxy_container =
            spec.is_some_and(|s| s.containers.iter().any(|c| c.name == "istio-proxy"));
        let native_proxy = spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|ics| {
                ics.iter().any(|c| {
                    c.name == "istio-proxy" && c.restart_policy.as_deref() == Some("Always")
                })
            });
        let redirected = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(AMBIENT_REDIRECTION_ANNOTATION))
            .is_some_and(|v| v == "enabled");
        let dataplane = if proxy_container || native_proxy {
            Dataplane::Sidecar
        } else if redirected {
            Dataplane::Ambient
        } else {
            Dataplane::None
        };
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        PodView {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            workload: workload_name(pod),
            tls_mode_istio: labels.get(TLS_MODE_LABEL).is_some_and(|v| v == "istio"),
            labels,
            dataplane,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            serving: running && ready && meta.deletion_timestamp.is_none(),
        }
    }
}

/// Istio's workload name: a ReplicaSet owner minus its pod-template-hash
/// suffix (the Deployment), any other controller owner's name, else the
/// pod's own name.
pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return meta.name.clone().unwrap_or_default();
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return deployment.to_string();
    }
    owner.name.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deployment_pod_is_named_after_the_deployment() {
        let p = pod(json!({
            "metadata": {"name": "api-5d8f-abcde", "namespace": "shop",
                "labels": {"app": "api", "pod-template-hash": "5d8f"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "api-5d8f", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert_eq!(workload_name(&p), "api");
        let bare = pod(json!({"metadata": {"name": "solo"}, "spec": {"containers": []}}));
        assert_eq!(workload_name(&bare), "solo");
    }

    #[test]
    fn shapes_are_classified() {
        let sidecar = pod(json!({
            "metadata": {"name": "a", "labels": {TLS_MODE_LABEL: "istio"}},
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let v = PodView::from_pod(&sidecar);
        assert_eq!(v.dataplane, Dataplane::Sidecar);
        assert!(v.tls_mode_istio && v.serving);

        let native = pod(json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "app"}],
                     "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}]}
        }));
        let v = PodView::from_pod(&native);
        assert_eq!(v.dataplane, Dataplane::Sidecar);
        assert!(!v.serving);

        let ambient = pod(json!({
            "metadata": {"name": "a", "annotations": {AMBIENT_REDIRECTION_ANNOTATION: "enabled"}},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert_eq!(PodView::from_pod(&ambient).dataplane, Dataplane::Ambient);

        let plain =
            pod(json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}}));
        assert_eq!(PodView::from_pod(&plain).dataplane, Dataplane::None);
    }
}
