//! Making the scenario exist in the API server: namespaces with their
//! injection labels, ServiceAccounts, Services, Istio resources, and
//! Deployment-shaped pods in each workload's enrollment shape.
//!
//! Changing a workload's enrollment rolls it like a Deployment would after
//! injection is switched on: pods of a new pod-template-hash are created
//! (Running, Ready), then the old ones are deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::discovery::{self, Scope};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testkit::pods::{self as shapes, WorkloadPod};

use crate::scenario::{Enrollment, Injection, NamespaceSpec, Scenario, WorkloadSpec};

/// Field manager of the twin's writes (it is not the operator).
pub const FIELD_MANAGER: &str = "mesh-twin";
/// Label on everything the twin creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mesh-twin");

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("resource {0}: {1}")]
    Resource(String, String),
}

type Result<T> = std::result::Result<T, MaterializeError>;

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn shape(e: Enrollment) -> shapes::Enrollment {
    match e {
        Enrollment::Sidecar => shapes::Enrollment::Sidecar,
        Enrollment::NativeSidecar => shapes::Enrollment::NativeSidecar,
        Enrollment::Ambient => shapes::Enrollment::Ambient,
        Enrollment::None => shapes::Enrollment::None,
    }
}

// Kubernetes' alphabet for generated names (no vowels, nothing ambiguous).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash a Deployment would compute for this pod template:
/// stable for the same template, new when enrollment (or anything else in
/// the template) changes.
pub fn template_hash(w: &WorkloadSpec, enrollment: Enrollment) -> String {
    let text = format!(
        "{}|{:?}|{:?}|{:?}|{:?}",
        w.name, enrollment, w.labels, w.ports, w.service_account
    );
    let mut n = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (0..10)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn service_account(w: &WorkloadSpec) -> String {
    w.service_account.clone().unwrap_or_else(|| w.name.clone())
}

pub struct Materializer {
    client: Client,
}

impl Materializer {
    pub fn new(client: Client) -> Self {
        Materializer { client }
    }

    /// Namespaces, ServiceAccounts, Services and resources of the scenario.
    pub async fn apply_static(&self, scenario: &Scenario) -> Result<()> {
        for ns in scenario.all_namespaces() {
            self.apply_namespace(&ns).await?;
        }
        for w in &scenario.workloads {
            self.apply_service_account(&w.namespace, &service_account(w))
                .await?;
            if !w.ports.is_empty() {
                self.apply_service(w).await?;
            }
        }
        for r in &scenario.resources {
            self.apply_resource(r).await?;
        }
        Ok(())
    }

    async fn apply_namespace(&self, ns: &NamespaceSpec) -> Result<()> {
        let mut labels: BTreeMap<String, String> = ns.labels.clone();
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        match ns.injection {
            Injection::Sidecar => {
                labels.insert("istio-injection".into(), "enabled".into());
            }
            Injection::Ambient => {
                labels.insert("istio.io/dataplane-mode".into(), "ambient".into());
            }
            Injection::None => {}
        }
        let obj = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns.name, "labels": labels},
        });
        Api::<Namespace>::all(self.client.clone())
            .patch(&ns.name, &apply_params(), &Patch::Apply(&obj))
            .await?;
        // No controller-manager in the sandbox: give the namespace the
        // `default` ServiceAccount a real cluster would.
        self.apply_service_account(&ns.name, "default").await
    }

    async fn apply_service_account(&self, ns: &str, name: &str) -> Result<()> {
        let obj = json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "labels": {MANAGED_BY.0: MANAGED_BY.1}},
        });
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .patch(name, &apply_params(), &Patch::Apply(&obj))
            .await?;
        Ok(())
    }

    async fn apply_service(&self, w: &WorkloadSpec) -> Result<()> {
        let name = w.service.clone().unwrap_or_else(|| w.name.clone());
        // Istio picks the protocol from the port name / appProtocol.
        let ports: Vec<Value> = w
            .ports
            .iter()
            .map(|p| {
                json!({
                    "name": format!("{}-{}", p.protocol.as_str(), p.port),
                    "port": p.port, "targetPort": p.port, "protocol": "TCP",
                    "appProtocol": p.protocol.as_str(),
                })
            })
            .collect();
        let obj = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": {"app": w.name, MANAGED_BY.0: MANAGED_BY.1}},
            "spec": {"selector": {"app": w.name}, "ports": ports},
        });
        Api::<Service>::namespaced(self.client.clone(), &w.namespace)
            .patch(&name, &apply_params(), &Patch::Apply(&obj))
            .await?;
        Ok(())
    }

    /// Server-side applies any object (Istio config in scenarios).
    pub async fn apply_resource(&self, r: &Value) -> Result<()> {
        let api_version = r["apiVersion"].as_str().unwrap_or_default();
        let kind = r["kind"].as_str().unwrap_or_default();
        let name = r["metadata"]["name"].as_str().unwrap_or_default();
        let what = format!("{kind} {name}");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps): (ApiResource, _) = discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| MaterializeError::Resource(what.clone(), e.to_string()))?;
        let api: Api<DynamicObject> = match (caps.scope, r["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => {
                return Err(MaterializeError::Resource(
                    what,
                    "needs metadata.namespace".into(),
                ));
            }
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        };
        api.patch(name, &apply_params(), &Patch::Apply(r)).await?;
        Ok(())
    }

    /// Makes the workload run `replicas` serving pods of the template for
    /// `enrollment`; returns whether it changed anything.
    pub async fn reconcile_workload(
        &self,
        w: &WorkloadSpec,
        enrollment: Enrollment,
    ) -> Result<bool> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &w.namespace);
        let selector = format!("app={},{}={}", w.name, MANAGED_BY.0, MANAGED_BY.1);
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let hash = template_hash(w, enrollment);
        let is_current = |p: &Pod| {
            p.labels().get("pod-template-hash") == Some(&hash)
                && p.metadata.deletion_timestamp.is_none()
        };
        let (current, old): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|p| is_current(p));
        let mut changed = false;

        let mut template = WorkloadPod::new(&w.name, shape(enrollment))
            .template_hash(&hash)
            .service_account(service_account(w))
            .label(MANAGED_BY.0, MANAGED_BY.1);
        for (k, v) in &w.labels {
            template = template.label(k, v);
        }
        for p in &w.ports {
            template = template.port(p.port);
        }

        // Pods whose status write was lost: report them Running now.
        for p in &current {
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                shapes::set_phase(
                    &self.client,
                    &w.namespace,
                    &p.name_any(),
                    shapes::Phase::Running,
                )
                .await?;
                changed = true;
            }
        }
        let want = w.replicas as usize;
        for _ in current.len()..want {
            shapes::create_running_pod(&self.client, &w.namespace, &template).await?;
            changed = true;
        }
        // Surplus pods of the current template, then every old one: the new
        // pods are serving before the old ones go, as in a rolling update.
        let surplus = current.iter().skip(want);
        for p in surplus.chain(old.iter()) {
            self.delete_pod(&api, &p.name_any()).await?;
            changed = true;
        }
        Ok(changed)
    }

    async fn delete_pod(&self, api: &Api<Pod>, name: &str) -> Result<()> {
        match api
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the twin's pods in `namespaces` that no scenario workload owns.
    pub async fn prune(&self, scenario: &Scenario, namespaces: &[String]) -> Result<()> {
        for ns in namespaces {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
            for p in api
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
            {
                let app = p.labels().get("app").cloned().unwrap_or_default();
                if scenario.workload(ns, &app).is_none() {
                    self.delete_pod(&api, &p.name_any()).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes every pod the twin created in the scenario's namespaces.
    pub async fn delete_pods(&self, scenario: &Scenario) -> Result<()> {
        self.prune(
            &Scenario::default(),
            &scenario
                .all_namespaces()
                .into_iter()
                .map(|n| n.name)
                .collect::<Vec<_>>(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_changes_with_enrollment_only() {
        let s = Scenario::parse("workloads: [{name: api, namespace: shop, ports: [{port: 80}]}]")
            .unwrap();
        let w = &s.workloads[0];
        let a = template_hash(w, Enrollment::None);
        assert_eq!(a, template_hash(w, Enrollment::None));
        assert_ne!(a, template_hash(w, Enrollment::Sidecar));
        assert_eq!(a.len(), 10);
    }
}
