//! The Services (hosts) through which clients reach the scope.

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};

use super::enrollment::is_finished;
use super::selection::{Scope, ScopeKind, labels_match};

/// A Service that fronts pods in scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ScopeHost {
    pub namespace: String,
    pub name: String,
    /// `clusterIP: None`: clients reach pods by their own IPs.
    pub headless: bool,
    pub ports: Vec<ServicePort>,
}

impl ScopeHost {
    /// `name.namespace.svc.<domain>`, the hostname Istio's registry uses.
    pub fn fqdn(&self, cluster_domain: &str) -> String {
        format!("{}.{}.svc.{cluster_domain}", self.name, self.namespace)
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Services whose selector selects at least one live pod in scope. For
/// namespace and mesh scopes, selector-less Services (hand-written
/// Endpoints) of covered namespaces count too: their endpoints may well be
/// the scope's pods. ExternalName Services front nothing in the cluster.
pub fn scope_hosts(services: &[Service], pods: &[Pod], scope: &Scope) -> Vec<ScopeHost> {
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| scope.selects_pod(p) && !is_finished(p))
        .collect();
    let mut hosts: Vec<ScopeHost> = services
        .iter()
        .filter_map(|svc| {
            let namespace = svc.metadata.namespace.clone().unwrap_or_default();
            let spec = svc.spec.as_ref()?;
            if spec.type_.as_deref() == Some("ExternalName") || !scope.covers_namespace(&namespace)
            {
                return None;
            }
            let selector = spec.selector.clone().unwrap_or_default();
            let fronts_scope = if selector.is_empty() {
                scope.kind() != ScopeKind::Workload
            } else {
                live.iter().any(|p| {
                    p.metadata.namespace.as_deref() == Some(namespace.as_str())
                        && labels_match(&selector, p.metadata.labels.as_ref())
                })
            };
            fronts_scope.then(|| ScopeHost {
                name: svc.metadata.name.clone().unwrap_or_default(),
                namespace,
                headless: spec.cluster_ip.as_deref() == Some("None"),
                ports: spec.ports.clone().unwrap_or_default(),
            })
        })
        .collect();
    hosts.sort_by_key(ScopeHost::key);
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::fixtures::{from, labels, pod, service};
    use serde_json::json;

    #[test]
    fn workload_scope_keeps_services_selecting_its_pods() {
        let pods = [
            pod("shop", "web-1", &[("app", "web"), ("tier", "front")]),
            pod("shop", "db-0", &[("app", "db")]),
        ];
        let mut headless = service(
            "shop",
            "web-peers",
            &[("app", "web")],
            json!([{"port": 80}]),
        );
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let services = [
            service(
                "shop",
                "web",
                &[("app", "web")],
                json!([{"port": 80, "targetPort": 8080}]),
            ),
            headless,
            service("shop", "db", &[("app", "db")], json!([{"port": 5432}])),
            service("other", "web", &[("app", "web")], json!([{"port": 80}])),
            from(
                json!({"metadata": {"namespace": "shop", "name": "manual"}, "spec": {"ports": [{"port": 1}]}}),
            ),
        ];
        let scope = Scope::new("shop", Some(labels(&[("app", "web")])), "istio-system");
        let hosts = scope_hosts(&services, &pods, &scope);
        let keys: Vec<String> = hosts.iter().map(ScopeHost::key).collect();
        assert_eq!(keys, vec!["shop/web", "shop/web-peers"]);
        assert!(hosts[1].headless && !hosts[0].headless);
        assert_eq!(hosts[0].fqdn("cluster.local"), "web.shop.svc.cluster.local");

        let ns = Scope::new("shop", None, "istio-system");
        let keys: Vec<String> = scope_hosts(&services, &pods, &ns)
            .iter()
            .map(ScopeHost::key)
            .collect();
        assert_eq!(
            keys,
            vec!["shop/db", "shop/manual", "shop/web", "shop/web-peers"]
        );
    }

    #[test]
    fn external_name_and_podless_services_are_skipped() {
        let ext: Service = from(json!({"metadata": {"namespace": "shop", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        let lonely = service("shop", "lonely", &[("app", "gone")], json!([{"port": 80}]));
        let scope = Scope::new("shop", None, "istio-system");
        assert!(scope_hosts(&[ext, lonely], &[], &scope).is_empty());
    }
}
