//! The migration's scope, following PeerAuthentication's own rules.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

/// Istio's default `rootNamespace`.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// What a migration covers: its namespace and optional `matchLabels`, read
/// against the mesh's root namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub namespace: String,
    /// Empty means no selector (Istio treats `matchLabels: {}` the same).
    pub match_labels: BTreeMap<String, String>,
    pub root_namespace: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    /// Root namespace, no selector: every namespace.
    MeshWide,
    /// Any other namespace, no selector.
    Namespace,
    /// A selector: the matching pods of the namespace.
    Workload,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "a PeerAuthentication with a selector in the root namespace {namespace:?} is ignored by \
         Istio (neither mesh-wide nor workload-specific); drop the selector for a mesh-wide \
         migration or create the migration in the workload's namespace"
    )]
    SelectorInRootNamespace { namespace: String },
}

impl Scope {
    pub fn new(
        namespace: impl Into<String>,
        match_labels: Option<BTreeMap<String, String>>,
        root_namespace: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            match_labels: match_labels.unwrap_or_default(),
            root_namespace: root_namespace.into(),
        }
    }

    pub fn kind(&self) -> ScopeKind {
        if !self.match_labels.is_empty() {
            ScopeKind::Workload
        } else if self.namespace == self.root_namespace {
            ScopeKind::MeshWide
        } else {
            ScopeKind::Namespace
        }
    }

    /// Rejects scopes Istio would silently ignore.
    pub fn check(&self) -> Result<(), ScopeError> {
        if self.namespace == self.root_namespace && !self.match_labels.is_empty() {
            return Err(ScopeError::SelectorInRootNamespace {
                namespace: self.namespace.clone(),
            });
        }
        Ok(())
    }

    pub fn covers_namespace(&self, namespace: &str) -> bool {
        self.kind() == ScopeKind::MeshWide || namespace == self.namespace
    }

    /// Whether an object with these labels in this namespace is selected.
    /// A mesh-wide scope selects everything; narrowing it to namespaces that
    /// are actually in the mesh is the caller's choice (`namespace_in_mesh`).
    pub fn selects(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.covers_namespace(namespace) && labels_match(&self.match_labels, labels)
    }

    pub fn selects_pod(&self, pod: &Pod) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        self.selects(ns, pod.metadata.labels.as_ref())
    }
}

/// `matchLabels` semantics: every pair present; an empty map selects all.
pub fn labels_match(
    match_labels: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    match_labels
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::fixtures::{labels, pod};

    #[test]
    fn kinds_and_check() {
        let mesh = Scope::new("istio-system", None, "istio-system");
        assert_eq!(mesh.kind(), ScopeKind::MeshWide);
        assert!(mesh.check().is_ok());
        let empty = Scope::new("shop", Some(BTreeMap::new()), "istio-system");
        assert_eq!(empty.kind(), ScopeKind::Namespace);
        let wl = Scope::new("shop", Some(labels(&[("app", "web")])), "istio-system");
        assert_eq!(wl.kind(), ScopeKind::Workload);
        assert!(wl.check().is_ok());
        let bad = Scope::new(
            "istio-system",
            Some(labels(&[("app", "web")])),
            "istio-system",
        );
        assert!(matches!(
            bad.check(),
            Err(ScopeError::SelectorInRootNamespace { .. })
        ));
    }

    #[test]
    fn selection() {
        let web = pod("shop", "web-7d9f-abcde", &[("app", "web")]);
        let db = pod("shop", "db-0", &[("app", "db")]);
        let other = pod("other", "web-1", &[("app", "web")]);
        let ns = Scope::new("shop", None, "istio-system");
        assert!(ns.selects_pod(&web) && ns.selects_pod(&db) && !ns.selects_pod(&other));
        let wl = Scope::new("shop", Some(labels(&[("app", "web")])), "istio-system");
        assert!(wl.selects_pod(&web) && !wl.selects_pod(&db) && !wl.selects_pod(&other));
        let mesh = Scope::new("istio-system", None, "istio-system");
        assert!(mesh.selects_pod(&other));
        assert!(!labels_match(&labels(&[("a", "b")]), None));
        assert!(labels_match(&BTreeMap::new(), None));
    }
}
