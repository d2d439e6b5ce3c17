//! The PeerAuthentication side: the policy the operator wants in force at the
//! scope, whether the cluster already holds it, and what to do with it when
//! the migration is deleted.

use std::collections::BTreeMap;

use kube::core::ObjectMeta;

use crate::api::istio::{
    FIELD_MANAGER, IstioSelector, MANAGED_BY_LABEL, PeerAuthentication, PeerAuthenticationSpec,
    PeerMtls,
};
use crate::api::migration::{MtlsMigration, OnDelete, PortMtls};
use crate::observe::PolicyObservation;
use crate::scope::{MIGRATION_ANNOTATION, ORIGINAL_SPEC_ANNOTATION, Scope};

/// A PeerAuthentication to server-side apply (field manager
/// [`FIELD_MANAGER`], with force: a taken-over policy's fields belong to
/// whoever wrote it first).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyApply {
    /// The apply body: apiVersion, kind, name, namespace, our annotations
    /// and label, and the spec fields we own.
    pub object: PeerAuthentication,
    /// False when the cluster already holds exactly this (the write is then
    /// a no-op and may be skipped).
    pub changed: bool,
    /// The `spec.mtls.mode` found before this write, for messages.
    pub previous_mode: Option<String>,
}

impl PolicyApply {
    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }
    pub fn namespace(&self) -> &str {
        self.object
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
    }
    pub fn mode(&self) -> &str {
        self.object.spec.mode().unwrap_or_default()
    }
}

/// The policy the migration wants: `mode` at the scope, with the port-level
/// exceptions (only sent with STRICT: PERMISSIVE already accepts everything).
pub(crate) fn desired_policy(
    namespace: &str,
    name: &str,
    scope: &Scope,
    mode: &str,
    ports: &BTreeMap<String, PortMtls>,
    owner: &str,
    original_spec: Option<&serde_json::Value>,
) -> PeerAuthentication {
    let spec = PeerAuthenticationSpec {
        selector: (!scope.match_labels.is_empty()).then(|| IstioSelector {
            match_labels: scope.match_labels.clone(),
        }),
        mtls: Some(PeerMtls::mode(mode)),
        port_level_mtls: if mode == "STRICT" {
            ports
                .iter()
                .map(|(port, p)| (port.clone(), PeerMtls::mode(p.mode.as_str())))
                .collect()
        } else {
            BTreeMap::new()
        },
    };
    let mut annotations = BTreeMap::from([(MIGRATION_ANNOTATION.to_string(), owner.to_string())]);
    if let Some(original) = original_spec {
        annotations.insert(ORIGINAL_SPEC_ANNOTATION.to_string(), original.to_string());
    }
    PeerAuthentication {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            annotations: Some(annotations),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                FIELD_MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec,
        ..PeerAuthentication::default()
    }
}

/// Whether the observed policy already is `desired` in every field we own.
/// Fields owned by others (left over from a taken-over policy) are not
/// compared: server-side apply leaves them alone and so do we.
pub(crate) fn already_in_force(
    observed: &PolicyObservation,
    desired: &PeerAuthentication,
    owner: &str,
    original_spec: Option<&serde_json::Value>,
) -> bool {
    let PolicyObservation::Found {
        managed_by,
        spec,
        original_spec: observed_original,
        ..
    } = observed
    else {
        return false;
    };
    if managed_by.as_deref() != Some(owner) || observed_original.as_ref() != original_spec {
        return false;
    }
    let Ok(found) = serde_json::from_value::<PeerAuthenticationSpec>(spec.clone()) else {
        return false;
    };
    mode_in_force(&found, &desired.spec) && found.match_labels() == desired.spec.match_labels()
}

/// Whether `found` enforces the mode and port exceptions of `desired`.
pub(crate) fn mode_in_force(
    found: &PeerAuthenticationSpec,
    desired: &PeerAuthenticationSpec,
) -> bool {
    found.mode() == desired.mode()
        && desired
            .port_level_mtls
            .iter()
            .all(|(port, m)| found.port_level_mtls.get(port).map(|f| &f.mode) == Some(&m.mode))
}

/// What to do with the managed PeerAuthentication when the migration is deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum DeleteAction {
    /// Not ours (absent, user-owned, another migration's, ambiguous): touch nothing.
    Nothing,
    /// `onDelete: Keep`: leave the spec as it is, but remove our annotations
    /// and label (a JSON merge patch, not an apply: dropping fields from an
    /// apply would delete `spec.mtls.mode`), so a later migration can take
    /// the policy over.
    Release { namespace: String, name: String },
    /// `onDelete: Restore` of a taken-over policy: replace the spec with the
    /// original and remove our annotations and label (an update with the
    /// resourceVersion read, since the whole spec is replaced).
    Restore {
        namespace: String,
        name: String,
        spec: serde_json::Value,
    },
    /// `onDelete: Restore` of a policy the operator created.
    Delete { namespace: String, name: String },
}

/// Decides the fate of the policy on deletion. A policy is only ever
/// deleted when the operator knows it created it; when in doubt, it is
/// released instead.
pub fn on_delete(migration: &MtlsMigration, observed: &PolicyObservation) -> DeleteAction {
    let owner = migration.key();
    let PolicyObservation::Found {
        name,
        managed_by,
        original_spec,
        ..
    } = observed
    else {
        return DeleteAction::Nothing;
    };
    if managed_by.as_deref() != Some(owner.as_str()) {
        return DeleteAction::Nothing;
    }
    let namespace = migration.metadata.namespace.clone().unwrap_or_default();
    let name = name.clone();
    if migration.spec.on_delete == OnDelete::Keep {
        return DeleteAction::Release { namespace, name };
    }
    let recorded = migration
        .status
        .as_ref()
        .and_then(|s| s.policy.as_ref())
        .filter(|p| p.name == name);
    // The annotation on the policy is the durable record; status is the
    // fallback if someone stripped the annotation.
    if let Some(spec) = original_spec
        .clone()
        .or_else(|| recorded.and_then(|p| p.original_spec.clone()))
    {
        return DeleteAction::Restore {
            namespace,
            name,
            spec,
        };
    }
    match recorded {
        Some(p) if !p.created => DeleteAction::Release { namespace, name },
        _ => DeleteAction::Delete { namespace, name },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::migration::{MtlsMigrationSpec, MtlsMigrationStatus, MtlsMode, PolicyStatus};
    use serde_json::json;

    fn migration(on_delete: OnDelete) -> MtlsMigration {
        let mut m = MtlsMigration::new(
            "cart",
            MtlsMigrationSpec {
                mode: MtlsMode::STRICT,
                selector: None,
                port_level_mtls: BTreeMap::new(),
                analysis: Default::default(),
                sidecars: Default::default(),
                on_delete,
            },
        );
        m.metadata.namespace = Some("shop".into());
        m
    }

    fn found(managed_by: Option<&str>, original: Option<serde_json::Value>) -> PolicyObservation {
        PolicyObservation::Found {
            name: "default".into(),
            mode: Some("STRICT".into()),
            spec: json!({"mtls": {"mode": "STRICT"}}),
            managed_by: managed_by.map(String::from),
            original_spec: original,
        }
    }

    #[test]
    fn ports_only_travel_with_strict() {
        let ports = BTreeMap::from([(
            "3306".to_string(),
            PortMtls {
                mode: crate::api::migration::PortMode::PERMISSIVE,
            },
        )]);
        let scope = Scope::new(
            "shop",
            Some(BTreeMap::from([("app".into(), "db".into())])),
            "istio-system",
        );
        let strict = desired_policy("shop", "db", &scope, "STRICT", &ports, "shop/db", None);
        assert_eq!(
            strict.spec.port_level_mtls["3306"].mode.as_deref(),
            Some("PERMISSIVE")
        );
        let permissive =
            desired_policy("shop", "db", &scope, "PERMISSIVE", &ports, "shop/db", None);
        assert!(permissive.spec.port_level_mtls.is_empty());
        let v = serde_json::to_value(&strict).unwrap();
        assert_eq!(
            v["metadata"]["annotations"][MIGRATION_ANNOTATION],
            "shop/db"
        );
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "db");
    }

    #[test]
    fn keep_releases_our_policy() {
        let m = migration(OnDelete::Keep);
        assert_eq!(
            on_delete(&m, &found(Some("shop/cart"), None)),
            DeleteAction::Release {
                namespace: "shop".into(),
                name: "default".into()
            }
        );
    }

    #[test]
    fn restore_puts_the_original_back() {
        let m = migration(OnDelete::Restore);
        let original = json!({"mtls": {"mode": "DISABLE"}});
        assert_eq!(
            on_delete(&m, &found(Some("shop/cart"), Some(original.clone()))),
            DeleteAction::Restore {
                namespace: "shop".into(),
                name: "default".into(),
                spec: original
            }
        );
    }

    #[test]
    fn restore_deletes_what_we_created() {
        let m = migration(OnDelete::Restore);
        assert_eq!(
            on_delete(&m, &found(Some("shop/cart"), None)),
            DeleteAction::Delete {
                namespace: "shop".into(),
                name: "default".into()
            }
        );
    }

    #[test]
    fn restore_falls_back_to_status_and_never_deletes_a_taken_over_policy() {
        let mut m = migration(OnDelete::Restore);
        let original = json!({"mtls": {"mode": "PERMISSIVE"}});
        m.status = Some(MtlsMigrationStatus {
            policy: Some(PolicyStatus {
                name: "default".into(),
                created: false,
                original_spec: Some(original.clone()),
                applied_mode: None,
            }),
            ..Default::default()
        });
        assert!(matches!(
            on_delete(&m, &found(Some("shop/cart"), None)),
            DeleteAction::Restore { spec, .. } if spec == original
        ));
        m.status
            .as_mut()
            .unwrap()
            .policy
            .as_mut()
            .unwrap()
            .original_spec = None;
        assert!(matches!(
            on_delete(&m, &found(Some("shop/cart"), None)),
            DeleteAction::Release { .. }
        ));
    }

    #[test]
    fn policies_that_are_not_ours_are_left_alone() {
        let m = migration(OnDelete::Restore);
        assert_eq!(on_delete(&m, &found(None, None)), DeleteAction::Nothing);
        assert_eq!(
            on_delete(&m, &found(Some("shop/other"), None)),
            DeleteAction::Nothing
        );
        assert_eq!(
            on_delete(&m, &PolicyObservation::Absent),
            DeleteAction::Nothing
        );
        assert_eq!(
            on_delete(
                &m,
                &PolicyObservation::Ambiguous {
                    names: vec!["a".into(), "b".into()]
                }
            ),
            DeleteAction::Nothing
        );
    }
}
