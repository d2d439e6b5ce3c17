//! Whether the scope's pods are in the mesh.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::selection::{Scope, ScopeKind};
use super::workload::workload_name;
use crate::observe::EnrollmentSummary;

/// How many not-enrolled pod names a summary lists.
pub const NOT_ENROLLED_LISTED: usize = 5;

const PROXY_CONTAINER: &str = "istio-proxy";
const AMBIENT_REDIRECTION: &str = "ambient.istio.io/redirection";

/// How a pod takes part in the mesh, from what injection or the ambient CNI
/// left on it (intent labels alone do not count: injection only happens at
/// pod creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrollment {
    /// `istio-proxy` among the containers.
    Sidecar,
    /// `istio-proxy` among the init containers with `restartPolicy: Always`.
    NativeSidecar,
    /// Annotation `ambient.istio.io/redirection: enabled`.
    Ambient,
    None,
}

impl Enrollment {
    pub fn is_enrolled(self) -> bool {
        self != Enrollment::None
    }

    /// Has an Envoy sidecar of either shape.
    pub fn has_sidecar(self) -> bool {
        matches!(self, Enrollment::Sidecar | Enrollment::NativeSidecar)
    }
}

pub fn pod_enrollment(pod: &Pod) -> Enrollment {
    if let Some(spec) = &pod.spec {
        let native =
            spec.init_containers.iter().flatten().any(|c| {
                c.name == PROXY_CONTAINER && c.restart_policy.as_deref() == Some("Always")
            });
        if native {
            return Enrollment::NativeSidecar;
        }
        if spec.containers.iter().any(|c| c.name == PROXY_CONTAINER) {
            return Enrollment::Sidecar;
        }
    }
    let redirected = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AMBIENT_REDIRECTION))
        .is_some_and(|v| v == "enabled");
    if redirected {
        Enrollment::Ambient
    } else {
        Enrollment::None
    }
}

/// Pods that ran to completion serve nothing and do not count.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn live_selected<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    scope: &'a Scope,
) -> impl Iterator<Item = &'a Pod> {
    pods.into_iter()
        .filter(move |p| scope.selects_pod(p) && !is_finished(p))
}

/// Enrollment of the scope's live pods. Not-enrolled names are
/// `namespace/name` for a mesh-wide scope, plain names otherwise.
pub fn summarize<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    scope: &'a Scope,
) -> EnrollmentSummary {
    let mut selected = 0u32;
    let mut enrolled = 0u32;
    let mut missing = Vec::new();
    for pod in live_selected(pods, scope) {
        selected += 1;
        if pod_enrollment(pod).is_enrolled() {
            enrolled += 1;
        } else {
            let name = pod.metadata.name.clone().unwrap_or_default();
            missing.push(match scope.kind() {
                ScopeKind::MeshWide => format!(
                    "{}/{name}",
                    pod.metadata.namespace.as_deref().unwrap_or_default()
                ),
                _ => name,
            });
        }
    }
    missing.sort();
    missing.truncate(NOT_ENROLLED_LISTED);
    EnrollmentSummary {
        selected,
        enrolled,
        not_enrolled: missing,
    }
}

/// The `destination_workload` values to query for a workload scope (from
/// its live pods); `None` for namespace and mesh scopes, which query every
/// workload so that pods created later are covered too.
pub fn destination_workloads<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    scope: &'a Scope,
) -> Option<BTreeSet<String>> {
    (scope.kind() == ScopeKind::Workload)
        .then(|| live_selected(pods, scope).map(workload_name).collect())
}

/// Whether new pods in this namespace get enrolled: sidecar injection
/// (`istio-injection=enabled` or a revision label `istio.io/rev`) or ambient
/// (`istio.io/dataplane-mode=ambient`).
pub fn namespace_in_mesh(namespace: &Namespace) -> bool {
    let Some(l) = namespace.metadata.labels.as_ref() else {
        return false;
    };
    let injection = l.get("istio-injection").map(String::as_str);
    if injection == Some("disabled") {
        return false;
    }
    injection == Some("enabled")
        || l.contains_key("istio.io/rev")
        || l.get("istio.io/dataplane-mode").map(String::as_str) == Some("ambient")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::fixtures::{from, labels, pod, sidecar_pod};
    use serde_json::json;

    fn native(ns: &str, name: &str) -> Pod {
        let mut p = pod(ns, name, &[("app", "web")]);
        p.spec.as_mut().unwrap().init_containers = Some(vec![from(
            json!({"name": "istio-proxy", "restartPolicy": "Always"}),
        )]);
        p
    }

    fn ambient(ns: &str, name: &str) -> Pod {
        let mut p = pod(ns, name, &[("app", "web")]);
        p.metadata.annotations = Some(labels(&[(AMBIENT_REDIRECTION, "enabled")]));
        p
    }

    fn finished(mut p: Pod, phase: &str) -> Pod {
        p.status.as_mut().unwrap().phase = Some(phase.into());
        p
    }

    #[test]
    fn enrollment_shapes() {
        assert_eq!(
            pod_enrollment(&sidecar_pod("s", "a", &[])),
            Enrollment::Sidecar
        );
        assert_eq!(pod_enrollment(&native("s", "a")), Enrollment::NativeSidecar);
        assert_eq!(pod_enrollment(&ambient("s", "a")), Enrollment::Ambient);
        assert_eq!(pod_enrollment(&pod("s", "a", &[])), Enrollment::None);

        // An init container named istio-proxy that is not restartable is not a sidecar.
        let mut p = pod("s", "a", &[]);
        p.spec.as_mut().unwrap().init_containers = Some(vec![from(json!({"name": "istio-proxy"}))]);
        assert_eq!(pod_enrollment(&p), Enrollment::None);

        // The ambient intent label alone is not enrollment.
        let p = pod("s", "a", &[("istio.io/dataplane-mode", "ambient")]);
        assert_eq!(pod_enrollment(&p), Enrollment::None);
        let mut p = pod("s", "a", &[]);
        p.metadata.annotations = Some(labels(&[(AMBIENT_REDIRECTION, "disabled")]));
        assert_eq!(pod_enrollment(&p), Enrollment::None);
    }

    #[test]
    fn summary_counts_live_selected_pods_and_lists_first_five_sorted() {
        let mut pods = vec![
            sidecar_pod("shop", "web-1", &[("app", "web")]),
            native("shop", "web-2"),
            ambient("shop", "web-3"),
            finished(pod("shop", "web-done", &[("app", "web")]), "Succeeded"),
            finished(pod("shop", "web-failed", &[("app", "web")]), "Failed"),
            pod("other", "web-x", &[("app", "web")]),
        ];
        for n in ["web-g", "web-b", "web-f", "web-a", "web-e", "web-c"] {
            pods.push(pod("shop", n, &[("app", "web")]));
        }
        let scope = Scope::new("shop", Some(labels(&[("app", "web")])), "istio-system");
        let s = summarize(&pods, &scope);
        assert_eq!(s.selected, 9);
        assert_eq!(s.enrolled, 3);
        assert_eq!(
            s.not_enrolled,
            vec!["web-a", "web-b", "web-c", "web-e", "web-f"]
        );
        assert!(!s.complete());

        let mesh = Scope::new("istio-system", None, "istio-system");
        let s = summarize(&pods, &mesh);
        assert_eq!(s.selected, 10);
        assert_eq!(s.not_enrolled[0], "other/web-x");
    }

    #[test]
    fn empty_selection_is_complete() {
        let scope = Scope::new("shop", None, "istio-system");
        let s = summarize(std::iter::empty(), &scope);
        assert_eq!(s, EnrollmentSummary::default());
        assert!(s.complete());
    }

    #[test]
    fn destination_workloads_only_for_workload_scope() {
        let mut p = sidecar_pod(
            "shop",
            "reviews-v1-abc-xyz",
            &[("app", "reviews"), ("pod-template-hash", "abc")],
        );
        p.metadata.owner_references = Some(vec![from(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-abc",
            "uid": "u", "controller": true
        }))]);
        let other = sidecar_pod("shop", "db-0", &[("app", "db")]);
        let pods = [p, other];
        let wl = Scope::new("shop", Some(labels(&[("app", "reviews")])), "istio-system");
        assert_eq!(
            destination_workloads(&pods, &wl),
            Some(BTreeSet::from(["reviews-v1".to_string()]))
        );
        let ns = Scope::new("shop", None, "istio-system");
        assert_eq!(destination_workloads(&pods, &ns), None);
    }

    #[test]
    fn namespace_mesh_labels() {
        let ns = |l: &[(&str, &str)]| -> Namespace {
            from(json!({"metadata": {"name": "n", "labels": labels(l)}}))
        };
        assert!(namespace_in_mesh(&ns(&[("istio-injection", "enabled")])));
        assert!(namespace_in_mesh(&ns(&[("istio.io/rev", "canary")])));
        assert!(namespace_in_mesh(&ns(&[(
            "istio.io/dataplane-mode",
            "ambient"
        )])));
        assert!(!namespace_in_mesh(&ns(&[
            ("istio-injection", "disabled"),
            ("istio.io/rev", "x")
        ])));
        assert!(!namespace_in_mesh(&ns(&[])));
    }
}
