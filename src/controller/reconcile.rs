//! One reconcile of one MtlsMigration: read the world from the shared caches
//! (and Prometheus when a measurement is due), let the pure core decide, then
//! write the PeerAuthentication, the status and the events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::error::{Error, Result};
use crate::api::istio::{FIELD_MANAGER, MANAGED_BY_LABEL, PeerAuthentication};
use crate::api::migration::{MtlsMigration, Protocols as SpecProtocols};
use crate::evidence::{Namespaces, PrometheusClient, PrometheusConfig, Protocols, QueryScope};
use crate::migration::{Decision, DeleteAction, Observed, decide, measurement_due, on_delete};
use crate::observe::Reading;
use crate::runtime::telemetry::Metrics;
use crate::scope::{
    self, DEFAULT_CLUSTER_DOMAIN, MIGRATION_ANNOTATION, ORIGINAL_SPEC_ANNOTATION, Scope, ScopeKind,
};

/// Kept on every MtlsMigration so `onDelete` runs before it disappears.
pub const FINALIZER: &str = "mtls.migrator.dev/cleanup";

/// The caches the reconciler reads, each fed by one watch that also
/// triggers reconciles.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub namespaces: Store<Namespace>,
    pub policies: Store<DynamicObject>,
    pub destination_rules: Store<DynamicObject>,
    /// True once every cache above has listed its objects.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

impl Stores {
    /// Whether every cache has listed its objects, waiting a little for it.
    /// Until then an empty cache means "not loaded", not "no pods, no
    /// policy, no DestinationRule". Bounded, so a watch that never syncs
    /// (e.g. RBAC) cannot hold a reconcile, and with it shutdown, forever.
    pub async fn ready(&self) -> bool {
        let mut synced = self.synced.clone();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s)).await,
            Ok(Ok(_))
        )
    }
}

/// Settings for reaching Prometheus.
#[derive(Clone, Debug)]
pub struct PrometheusSettings {
    pub default_url: Option<String>,
    pub timeout: Duration,
    pub token_file: Option<PathBuf>,
}

/// Everything a reconcile needs. The clock is a parameter so tests and the
/// decision core agree on time.
pub struct Context {
    pub client: Client,
    pub root_namespace: String,
    pub prometheus: PrometheusSettings,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub stores: Stores,
    pub clock: Box<dyn Fn() -> Timestamp + Send + Sync>,
    /// One HTTP client per (URL, token), so connections are reused.
    clients: Mutex<HashMap<(String, Option<String>), PrometheusClient>>,
}

impl Context {
    pub fn new(
        client: Client,
        identity: &str,
        root_namespace: String,
        prometheus: PrometheusSettings,
        metrics: Metrics,
        stores: Stores,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity.to_string()),
            },
        );
        Self {
            client,
            root_namespace,
            prometheus,
            metrics,
            recorder,
            stores,
            clock: Box::new(Timestamp::now),
            clients: Mutex::default(),
        }
    }

    fn prometheus_client(&self, url: &str) -> Result<PrometheusClient> {
        // Re-read on every measurement: mounted Secrets rotate in place.
        let token = match &self.prometheus.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_string()))
                .unwrap_or_else(|err| {
                    warn!(path = %path.display(), %err, "reading the Prometheus token");
                    None
                }),
            None => None,
        };
        let key = (url.to_string(), token.clone());
        let mut clients = self.clients.lock().expect("client cache lock");
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = PrometheusClient::new(PrometheusConfig {
            url: url.to_string(),
            timeout: self.prometheus.timeout,
            bearer_token: token,
        })?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn scope_of(mig: &MtlsMigration, root_namespace: &str) -> Scope {
    Scope::new(
        mig.namespace().unwrap_or_default(),
        mig.spec.selector.as_ref().map(|s| s.match_labels.clone()),
        root_namespace,
    )
}

fn spec_protocols(p: SpecProtocols) -> Protocols {
    match p {
        SpecProtocols::HTTP => Protocols::Http,
        SpecProtocols::TCP => Protocols::Tcp,
        SpecProtocols::Both => Protocols::Both,
    }
}

pub async fn reconcile(mig: Arc<MtlsMigration>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = mig.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<MtlsMigration> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, mig, |event| async {
        match event {
            FinalizerEvent::Apply(m) => apply(m, &ctx).await,
            FinalizerEvent::Cleanup(m) => cleanup(m, &ctx).await,
        }
    })
    .await;
    let result = match result {
        // A second cleanup from a cache entry that still showed the object
        // after the first one removed the finalizer: the object is gone,
        // which is what removing the finalizer was for.
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)))
            if s.is_not_found() =>
        {
            Ok(Action::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

/// `key` is the migration's `namespace/name`.
pub fn error_policy(key: &str, err: &Error, ctx: &Context) -> Action {
    ctx.metrics.observe_error(err.metric_label());
    warn!(migration = %key, error = %err, "reconcile failed");
    match err {
        // Nothing a retry can fix: wait for the object to change.
        Error::NotNamespaced | Error::Serialize { .. } => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(2)),
    }
}

/// Live pods the scope could select. A mesh-wide scope only looks at
/// namespaces that are in the mesh (labelled for injection or ambient):
/// kube-system and friends are not migrated and must not block the flip.
fn candidate_pods(ctx: &Context, scope: &Scope) -> Vec<Arc<Pod>> {
    let mesh_namespaces: Option<Vec<String>> = (scope.kind() == ScopeKind::MeshWide).then(|| {
        ctx.stores
            .namespaces
            .state()
            .iter()
            .filter(|n| scope::namespace_in_mesh(n))
            .map(|n| n.name_any())
            .collect()
    });
    ctx.stores
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            let ns = p.namespace().unwrap_or_default();
            match &mesh_namespaces {
                Some(list) => list.contains(&ns),
                None => scope.covers_namespace(&ns),
            }
        })
        .collect()
}

async fn measure(mig: &MtlsMigration, ctx: &Context, scope: &Scope, pods: &[Arc<Pod>]) -> Reading {
    let Some(url) = mig
        .spec
        .analysis
        .prometheus_url
        .clone()
        .or_else(|| ctx.prometheus.default_url.clone())
    else {
        return Reading::QueryFailed {
            message: "no Prometheus URL: set spec.analysis.prometheusUrl or the operator's \
                      --prometheus-url"
                .into(),
        };
    };
    let window = match mig.spec.analysis.times() {
        Ok(t) => t.window,
        Err(e) => {
            return Reading::QueryFailed {
                message: e.to_string(),
            };
        }
    };
    let client = match ctx.prometheus_client(&url) {
        Ok(c) => c,
        Err(e) => {
            return Reading::QueryFailed {
                message: e.to_string(),
            };
        }
    };
    let query_scope = QueryScope {
        namespaces: match scope.kind() {
            ScopeKind::MeshWide => Namespaces::MeshWide,
            _ => Namespaces::one(mig.namespace().unwrap_or_default()),
        },
        workloads: scope::destination_workloads(pods.iter().map(|p| p.as_ref()), scope),
        protocols: spec_protocols(mig.spec.analysis.protocols),
        window,
    };
    let started = Instant::now();
    let reading = client.measure(&query_scope).await;
    let ok = !matches!(reading, Reading::QueryFailed { .. });
    ctx.metrics.observe_query(started.elapsed(), ok);
    reading
}

async fn apply(mig: Arc<MtlsMigration>, ctx: &Context) -> Result<Action> {
    // The migrations' cache can be ready before the others (a restart): a
    // decision over a half-loaded world would see the managed policy as
    // absent (losing the hold) or miss unenrolled pods and conflicts.
    if !ctx.stores.ready().await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ns = mig.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<MtlsMigration> = Api::namespaced(ctx.client.clone(), &ns);
    // The cached object can lag behind our own last status write; deciding
    // from a stale status could repeat a transition. A quorum read is cheap.
    let Some(mig) = api.get_opt(&mig.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let now = (ctx.clock)();
    let scope = scope_of(&mig, &ctx.root_namespace);
    let pods = candidate_pods(ctx, &scope);
    let enrollment = scope::summarize(pods.iter().map(|p| p.as_ref()), &scope);

    let owned_pods: Vec<Pod> = pods.iter().map(|p| p.as_ref().clone()).collect();
    let services: Vec<Service> = ctx
        .stores
        .services
        .state()
        .iter()
        .filter(|s| scope.covers_namespace(&s.namespace().unwrap_or_default()))
        .map(|s| s.as_ref().clone())
        .collect();
    let hosts = scope::scope_hosts(&services, &owned_pods, &scope);
    let rules: Vec<DynamicObject> = ctx
        .stores
        .destination_rules
        .state()
        .iter()
        .map(|r| r.as_ref().clone())
        .collect();
    let conflicts = scope::conflicts(&rules, &hosts, DEFAULT_CLUSTER_DOMAIN);
    let policies: Vec<DynamicObject> = ctx
        .stores
        .policies
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .map(|p| p.as_ref().clone())
        .collect();
    let policy = scope::resolve_policy(&policies, &scope);

    let reading = if measurement_due(&mig, now) {
        Some(measure(&mig, ctx, &scope, &pods).await)
    } else {
        None
    };
    let observed = Observed {
        policy: &policy,
        enrollment: &enrollment,
        conflicts: &conflicts,
        reading: reading.as_ref(),
    };
    let decision = decide(&mig, &ctx.root_namespace, &observed, now);
    write(&mig, ctx, &api, &decision).await?;
    ctx.metrics
        .set_phase(&mig.key(), decision.status.phase.map(|p| p.as_str()));
    Ok(match decision.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Policy first, then status, then events: status never claims a policy
/// that was not written, and a failed write is retried from the same status.
async fn write(
    mig: &MtlsMigration,
    ctx: &Context,
    api: &Api<MtlsMigration>,
    decision: &Decision,
) -> Result<()> {
    if let Some(policy) = decision.policy.as_ref().filter(|p| p.changed) {
        let pas: Api<PeerAuthentication> = Api::namespaced(ctx.client.clone(), policy.namespace());
        pas.patch(
            policy.name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&policy.object),
        )
        .await?;
        info!(
            migration = %mig.key(),
            policy = policy.name(),
            mode = policy.mode(),
            previous = ?policy.previous_mode,
            "applied PeerAuthentication"
        );
    }
    if decision.status_changed {
        // resourceVersion makes this a conditional write: if another replica
        // (a leader that has not yet noticed it lost the lease) wrote in
        // between, we get a conflict and retry from fresh state.
        let body = json!({
            "apiVersion": MtlsMigration::api_version(&()),
            "kind": MtlsMigration::kind(&()),
            "metadata": { "resourceVersion": mig.resource_version() },
            "status": decision.status,
        });
        api.patch_status(
            &mig.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        debug!(migration = %mig.key(), phase = ?decision.status.phase, "status written");
    }
    let reference = mig.object_ref(&());
    for note in &decision.events {
        if let Err(err) = ctx.recorder.publish(&note.to_event(), &reference).await {
            // An event is a courtesy; the status already says it.
            warn!(migration = %mig.key(), %err, "publishing event");
        }
    }
    Ok(())
}

/// A stored MtlsMigration that does not deserialize (written under an older
/// or newer schema): say so on the object and wait for it to change, instead
/// of wedging the watch for every other migration.
pub async fn report_invalid(obj: &DeserializeGuard<MtlsMigration>, error: &str, ctx: &Context) {
    let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    warn!(migration = %key, %error, "MtlsMigration does not match the CRD this operator knows");
    ctx.metrics.observe_error("invalid_object");
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: crate::api::conditions::reasons::INVALID_SPEC.into(),
        note: Some(format!(
            "The operator cannot read this MtlsMigration ({error}). Re-apply it against the \
             installed CRD (crds/mtlsmigration.yaml)."
        )),
        action: "Read".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(migration = %key, %err, "publishing event");
    }
}

async fn cleanup(mig: Arc<MtlsMigration>, ctx: &Context) -> Result<Action> {
    let ns = mig.namespace().ok_or(Error::NotNamespaced)?;
    let scope = scope_of(&mig, &ctx.root_namespace);
    let pa_api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<PeerAuthentication>(&()),
    );
    // Read the policies fresh: the decision deletes or rewrites them.
    let policies = pa_api.list(&Default::default()).await?.items;
    let observed = scope::resolve_policy(&policies, &scope);
    let action = on_delete(&mig, &observed);
    let (reason, note) = match &action {
        DeleteAction::Nothing => return Ok(Action::await_change()),
        DeleteAction::Release { name, .. } => {
            let patch = json!({ "metadata": {
                "annotations": { MIGRATION_ANNOTATION: null, ORIGINAL_SPEC_ANNOTATION: null },
                "labels": { MANAGED_BY_LABEL: null },
            }});
            pa_api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            (
                "PolicyKept",
                format!("Left PeerAuthentication {ns}/{name} as it is (onDelete: Keep)"),
            )
        }
        DeleteAction::Restore { name, spec, .. } => {
            let mut current = pa_api.get(name).await?;
            current.data["spec"] = spec.clone();
            if let Some(a) = current.metadata.annotations.as_mut() {
                a.remove(MIGRATION_ANNOTATION);
                a.remove(ORIGINAL_SPEC_ANNOTATION);
            }
            if let Some(l) = current.metadata.labels.as_mut() {
                l.remove(MANAGED_BY_LABEL);
            }
            current.metadata.managed_fields = None;
            // A replace with the resourceVersion just read: the whole spec
            // goes back to what the user had, or nothing happens.
            pa_api
                .replace(
                    name,
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &current,
                )
                .await?;
            (
                "PolicyRestored",
                format!("Put PeerAuthentication {ns}/{name} back as it was before the migration"),
            )
        }
        DeleteAction::Delete { name, .. } => {
            match pa_api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            (
                "PolicyDeleted",
                format!("Deleted PeerAuthentication {ns}/{name}, which the migration had created"),
            )
        }
    };
    info!(migration = %mig.key(), reason, "{note}");
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "Cleanup".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &mig.object_ref(&())).await {
        warn!(migration = %mig.key(), %err, "publishing event");
    }
    ctx.metrics.set_phase(&mig.key(), None);
    Ok(Action::await_change())
}
