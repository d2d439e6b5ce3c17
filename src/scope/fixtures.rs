//! Test objects built from JSON, the way they come from the API server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::DynamicObject;
use serde_json::{Value, json};

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A running pod with one `app` container and no mesh enrollment.
pub fn pod(namespace: &str, name: &str, pod_labels: &[(&str, &str)]) -> Pod {
    from(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels(pod_labels)},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"}
    }))
}

/// The same, with an injected `istio-proxy` sidecar container.
pub fn sidecar_pod(namespace: &str, name: &str, pod_labels: &[(&str, &str)]) -> Pod {
    let mut p = pod(namespace, name, pod_labels);
    let spec = p.spec.as_mut().unwrap();
    spec.containers
        .push(from(json!({"name": "istio-proxy", "image": "proxyv2"})));
    p
}

pub fn service(namespace: &str, name: &str, selector: &[(&str, &str)], ports: Value) -> Service {
    from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"selector": labels(selector), "ports": ports}
    }))
}

pub fn dynamic(value: Value) -> DynamicObject {
    from(value)
}

pub fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("fixture deserializes")
}
