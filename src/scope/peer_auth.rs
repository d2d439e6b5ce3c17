//! Which PeerAuthentication Istio applies to the scope, and which others
//! would decide some of its pods instead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde_json::Value;

use super::enrollment::is_finished;
use super::selection::{Scope, ScopeKind, labels_match};
use crate::observe::PolicyObservation;

/// `namespace/name` of the MtlsMigration managing a PeerAuthentication.
pub const MIGRATION_ANNOTATION: &str = "mtls.migrator.dev/migration";
/// The policy's spec (JSON) as it was before the operator took it over.
pub const ORIGINAL_SPEC_ANNOTATION: &str = "mtls.migrator.dev/original-spec";

/// How many affected pod names a [`PolicyOverride`] lists.
const PODS_LISTED: usize = 5;

fn selector(pa: &DynamicObject) -> BTreeMap<String, String> {
    pa.data["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn namespace(pa: &DynamicObject) -> &str {
    pa.metadata.namespace.as_deref().unwrap_or_default()
}

fn name(pa: &DynamicObject) -> &str {
    pa.metadata.name.as_deref().unwrap_or_default()
}

/// Istio's precedence among equals: oldest first, then name, then
/// namespace. An object without a creation time (not stored yet) is newest.
fn age_key(pa: &DynamicObject) -> (bool, Option<&Time>, &str, &str) {
    let created = pa.metadata.creation_timestamp.as_ref();
    (created.is_none(), created, name(pa), namespace(pa))
}

/// `spec.mtls.mode` as written, `None` when absent.
pub fn policy_mode(pa: &DynamicObject) -> Option<String> {
    pa.data["spec"]["mtls"]["mode"].as_str().map(str::to_string)
}

/// Whether the policy decides anything itself, rather than inheriting
/// (mode absent or `UNSET`, no port-level mode).
fn sets_a_mode(pa: &DynamicObject) -> bool {
    let decides = |v: &Value| v.as_str().is_some_and(|m| !m.eq_ignore_ascii_case("UNSET"));
    let spec = &pa.data["spec"];
    decides(&spec["mtls"]["mode"])
        || spec["portLevelMtls"]
            .as_object()
            .is_some_and(|ports| ports.values().any(|p| decides(&p["mode"])))
}

/// The policies at the scope's own level, oldest first: namespace-wide ones
/// for a namespace or mesh scope, identical-selector ones for a workload
/// scope.
fn governing<'a>(pas: &'a [DynamicObject], scope: &Scope) -> Vec<&'a DynamicObject> {
    let mut found: Vec<&DynamicObject> = pas
        .iter()
        .filter(|pa| namespace(pa) == scope.namespace && selector(pa) == scope.match_labels)
        .collect();
    found.sort_by(|a, b| age_key(a).cmp(&age_key(b)));
    found
}

/// The PeerAuthentication Istio applies at the scope's level. Several
/// namespace-wide (or identical-selector) policies are `Ambiguous`: Istio
/// would use the oldest and ignore the rest, and taking over any of them
/// silently would be a guess.
pub fn resolve_policy(pas: &[DynamicObject], scope: &Scope) -> PolicyObservation {
    let found = governing(pas, scope);
    match found.as_slice() {
        [] => PolicyObservation::Absent,
        [pa] => {
            let annotations = pa.metadata.annotations.as_ref();
            let annotation = |key: &str| annotations.and_then(|a| a.get(key)).cloned();
            PolicyObservation::Found {
                name: name(pa).to_string(),
                mode: policy_mode(pa),
                spec: pa.data.get("spec").cloned().unwrap_or(Value::Null),
                managed_by: annotation(MIGRATION_ANNOTATION),
                // Unparseable JSON is kept as a string rather than dropped,
                // so a Restore fails visibly instead of restoring nothing.
                original_spec: annotation(ORIGINAL_SPEC_ANNOTATION)
                    .map(|raw| serde_json::from_str(&raw).unwrap_or(Value::String(raw))),
            }
        }
        several => PolicyObservation::Ambiguous {
            names: several.iter().map(|pa| name(pa).to_string()).collect(),
        },
    }
}

/// `namespace/name` of every policy whose migration annotation names
/// `migration_key` (also ones no longer governing the scope, e.g. after a
/// selector edit), sorted.
pub fn managed_policies(pas: &[DynamicObject], migration_key: &str) -> Vec<String> {
    let mut out: Vec<String> = pas
        .iter()
        .filter(|pa| {
            pa.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIGRATION_ANNOTATION))
                .is_some_and(|v| v == migration_key)
        })
        .map(|pa| format!("{}/{}", namespace(pa), name(pa)))
        .collect();
    out.sort();
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverrideReason {
    /// Workload scope: an older workload policy with another selector
    /// matches some of the pods; Istio applies the oldest, so ours is
    /// ignored for them.
    OlderWorkloadPolicy,
    /// A workload policy that sets a mode decides its pods instead of the
    /// namespace- or mesh-wide policy (narrowest wins).
    WorkloadPolicy,
    /// Mesh scope: a namespace-wide policy that sets a mode decides its
    /// namespace instead of the mesh-wide one.
    NamespacePolicy,
}

/// Another policy that decides some of the scope's pods.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyOverride {
    /// `namespace/name`.
    pub policy: String,
    pub mode: Option<String>,
    pub reason: OverrideReason,
    /// How many live pods in scope it decides.
    pub pod_count: u32,
    /// The first few of them (`namespace/name`), sorted.
    pub pods: Vec<String>,
}

/// Policies that would keep the migration's policy from deciding some of the
/// scope's live pods (see [`OverrideReason`]). Policies in the root
/// namespace with a selector are ignored by Istio and skipped here.
pub fn overriding_policies(
    pas: &[DynamicObject],
    scope: &Scope,
    pods: &[Pod],
) -> Vec<PolicyOverride> {
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| scope.selects_pod(p) && !is_finished(p))
        .collect();
    let ours = governing(pas, scope).first().map(|pa| age_key(pa));
    let mut out = Vec::new();
    for pa in pas {
        let ns = namespace(pa);
        let sel = selector(pa);
        if ns == scope.root_namespace {
            continue;
        }
        let reason = match scope.kind() {
            ScopeKind::Workload => {
                let older = ours.is_none_or(|o| age_key(pa) < o);
                (ns == scope.namespace && !sel.is_empty() && sel != scope.match_labels && older)
                    .then_some(OverrideReason::OlderWorkloadPolicy)
            }
            ScopeKind::Namespace => (ns == scope.namespace && !sel.is_empty() && sets_a_mode(pa))
                .then_some(OverrideReason::WorkloadPolicy),
            ScopeKind::MeshWide if sets_a_mode(pa) => Some(if sel.is_empty() {
                OverrideReason::NamespacePolicy
            } else {
                OverrideReason::WorkloadPolicy
            }),
            ScopeKind::MeshWide => None,
        };
        let Some(reason) = reason else { continue };
        let mut affected: Vec<String> = live
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && labels_match(&sel, p.metadata.labels.as_ref())
            })
            .map(|p| format!("{ns}/{}", p.metadata.name.as_deref().unwrap_or_default()))
            .collect();
        if affected.is_empty() {
            continue;
        }
        affected.sort();
        let pod_count = affected.len() as u32;
        affected.truncate(PODS_LISTED);
        out.push(PolicyOverride {
            policy: format!("{ns}/{}", name(pa)),
            mode: policy_mode(pa),
            reason,
            pod_count,
            pods: affected,
        });
    }
    out.sort_by(|a, b| a.policy.cmp(&b.policy));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::fixtures::{dynamic, labels, pod};
    use serde_json::json;

    fn pa(ns: &str, name: &str, created: &str, spec: Value) -> DynamicObject {
        dynamic(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
            "spec": spec
        }))
    }

    const T1: &str = "2026-01-01T00:00:00Z";
    const T2: &str = "2026-01-02T00:00:00Z";

    fn ns_scope() -> Scope {
        Scope::new("shop", None, "istio-system")
    }

    fn web_scope() -> Scope {
        Scope::new("shop", Some(labels(&[("app", "web")])), "istio-system")
    }

    #[test]
    fn absent_found_and_annotations() {
        assert_eq!(resolve_policy(&[], &ns_scope()), PolicyObservation::Absent);
        let mut p = pa(
            "shop",
            "default",
            T1,
            json!({"mtls": {"mode": "PERMISSIVE"}}),
        );
        p.metadata.annotations = Some(labels(&[
            (MIGRATION_ANNOTATION, "shop/move"),
            (ORIGINAL_SPEC_ANNOTATION, r#"{"mtls":{"mode":"DISABLE"}}"#),
        ]));
        let other_ns = pa("other", "default", T1, json!({}));
        let workload = pa(
            "shop",
            "web",
            T1,
            json!({"selector": {"matchLabels": {"app": "web"}}}),
        );
        let pas = [p, other_ns, workload];
        assert_eq!(
            resolve_policy(&pas, &ns_scope()),
            PolicyObservation::Found {
                name: "default".into(),
                mode: Some("PERMISSIVE".into()),
                spec: json!({"mtls": {"mode": "PERMISSIVE"}}),
                managed_by: Some("shop/move".into()),
                original_spec: Some(json!({"mtls": {"mode": "DISABLE"}})),
            }
        );
        assert_eq!(managed_policies(&pas, "shop/move"), vec!["shop/default"]);
        assert!(managed_policies(&pas, "shop/other").is_empty());
        match resolve_policy(&pas, &web_scope()) {
            PolicyObservation::Found {
                name,
                managed_by,
                original_spec,
                mode,
                ..
            } => {
                assert_eq!(
                    (name.as_str(), managed_by, original_spec, mode),
                    ("web", None, None, None)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_match_labels_is_namespace_wide() {
        let p = pa(
            "shop",
            "wide",
            T1,
            json!({"selector": {"matchLabels": {}}, "mtls": {"mode": "STRICT"}}),
        );
        assert!(
            matches!(resolve_policy(&[p], &ns_scope()), PolicyObservation::Found { name, .. } if name == "wide")
        );
    }

    #[test]
    fn several_namespace_wide_is_ambiguous_oldest_first() {
        let pas = [
            pa("shop", "zeta", T1, json!({})),
            pa("shop", "newer", T2, json!({})),
            pa("shop", "alpha", T1, json!({})),
        ];
        assert_eq!(
            resolve_policy(&pas, &ns_scope()),
            PolicyObservation::Ambiguous {
                names: vec!["alpha".into(), "zeta".into(), "newer".into()]
            }
        );
    }

    #[test]
    fn identical_workload_selectors_are_ambiguous() {
        let sel = json!({"selector": {"matchLabels": {"app": "web"}}});
        let pas = [pa("shop", "a", T1, sel.clone()), pa("shop", "b", T2, sel)];
        assert!(matches!(
            resolve_policy(&pas, &web_scope()),
            PolicyObservation::Ambiguous { .. }
        ));
    }

    #[test]
    fn mesh_scope_reads_root_namespace() {
        let mesh = Scope::new("istio-system", None, "istio-system");
        let pas = [
            pa(
                "istio-system",
                "mesh",
                T1,
                json!({"mtls": {"mode": "PERMISSIVE"}}),
            ),
            pa(
                "istio-system",
                "ignored",
                T1,
                json!({"selector": {"matchLabels": {"a": "b"}}}),
            ),
        ];
        assert!(
            matches!(resolve_policy(&pas, &mesh), PolicyObservation::Found { name, .. } if name == "mesh")
        );
    }

    #[test]
    fn unparseable_original_spec_is_kept_as_text() {
        let mut p = pa("shop", "default", T1, json!({}));
        p.metadata.annotations = Some(labels(&[(ORIGINAL_SPEC_ANNOTATION, "{oops")]));
        match resolve_policy(&[p], &ns_scope()) {
            PolicyObservation::Found { original_spec, .. } => {
                assert_eq!(original_spec, Some(Value::String("{oops".into())))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn older_workload_policy_shadows_ours() {
        let pods = [
            pod("shop", "web-1", &[("app", "web"), ("tier", "front")]),
            pod("shop", "db-0", &[("app", "db")]),
        ];
        let ours = pa(
            "shop",
            "mtlsm-web",
            T2,
            json!({"selector": {"matchLabels": {"app": "web"}}}),
        );
        let older = pa(
            "shop",
            "front",
            T1,
            json!({"selector": {"matchLabels": {"tier": "front"}}}),
        );
        let newer = pa(
            "shop",
            "late",
            "2026-02-01T00:00:00Z",
            json!({"selector": {"matchLabels": {"tier": "front"}}}),
        );
        let unrelated = pa(
            "shop",
            "db",
            T1,
            json!({"selector": {"matchLabels": {"app": "db"}}}),
        );
        let found = overriding_policies(
            &[ours.clone(), older.clone(), newer.clone(), unrelated],
            &web_scope(),
            &pods,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].policy, "shop/front");
        assert_eq!(found[0].reason, OverrideReason::OlderWorkloadPolicy);
        assert_eq!(found[0].pods, vec!["shop/web-1"]);
        // Without our policy yet, every existing matching one is older.
        let found = overriding_policies(&[older, newer], &web_scope(), &pods);
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn namespace_and_mesh_overrides_need_a_mode() {
        let pods = [
            pod("shop", "web-1", &[("app", "web")]),
            pod("blog", "b-1", &[]),
        ];
        let permissive = pa(
            "shop",
            "web-perm",
            T1,
            json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "PERMISSIVE"}}),
        );
        let unset = pa(
            "shop",
            "web-unset",
            T1,
            json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "UNSET"}}),
        );
        let port_only = pa(
            "shop",
            "web-port",
            T1,
            json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
        );
        let blog_wide = pa(
            "blog",
            "default",
            T1,
            json!({"mtls": {"mode": "PERMISSIVE"}}),
        );
        let pas = [permissive, unset, port_only, blog_wide];
        let names = |v: Vec<PolicyOverride>| {
            v.into_iter()
                .map(|o| (o.policy, o.reason))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(overriding_policies(&pas, &ns_scope(), &pods)),
            vec![
                ("shop/web-perm".into(), OverrideReason::WorkloadPolicy),
                ("shop/web-port".into(), OverrideReason::WorkloadPolicy)
            ]
        );
        let mesh = Scope::new("istio-system", None, "istio-system");
        assert_eq!(
            names(overriding_policies(&pas, &mesh, &pods)),
            vec![
                ("blog/default".into(), OverrideReason::NamespacePolicy),
                ("shop/web-perm".into(), OverrideReason::WorkloadPolicy),
                ("shop/web-port".into(), OverrideReason::WorkloadPolicy)
            ]
        );
    }
}
